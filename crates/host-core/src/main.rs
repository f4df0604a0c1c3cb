//! `host-core`: the supervisor of a WebAssembly actor host, and its CLI.

mod child;
mod claims;
mod control;
mod events;
mod host;
mod keys;
mod manifest;
mod par;
mod paths;
mod providers;
mod worker;

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use wire::{
    control::{ControlReply, ControlRequest, Inventory},
    Bytes,
};

use crate::{
    claims::SignOptions,
    host::{Host, HostConfig, HostPaths},
    keys::KeyKind,
    paths::StatePaths,
};

#[derive(Parser)]
#[command(
    name = "host-core",
    version,
    about = "A process-isolated WebAssembly actor host in the model of wasmCloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host in the foreground.
    Run(RunArgs),
    /// Generate keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Sign and inspect actor claims.
    Claims {
        #[command(subcommand)]
        command: ClaimsCommand,
    },
    /// Create and inspect provider archives.
    Par {
        #[command(subcommand)]
        command: ParCommand,
    },
    /// Control a running host.
    Ctl(CtlArgs),
}

#[derive(Subcommand)]
enum ParCommand {
    /// Pack provider binaries into a signed archive.
    Create(Box<ParCreateArgs>),
    /// Show an archive's claims and targets.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ParCreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    vendor: String,
    /// The contract the provider implements, e.g. wasmcloud:keyvalue.
    #[arg(long)]
    capid: String,
    /// TARGET=BINARY, e.g. x86_64-linux=target/release/my-provider (repeatable).
    #[arg(long = "target", value_name = "TARGET=BIN", required = true)]
    targets: Vec<String>,
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long)]
    rev: Option<i32>,
    #[arg(long)]
    ver: Option<String>,
    #[command(flatten)]
    keys: SigningKeys,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where the host keeps its data and caches [env: WASMHOST_STATE_DIR].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where the host keeps its sockets [env: WASMHOST_RUNTIME_DIR; default: the state dir].
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Only actors signed by these accounts may start (default: any issuer).
    #[arg(long = "allowed-issuer", value_name = "ACCOUNT_KEY")]
    allowed_issuers: Vec<String>,
    /// Deadline of one actor invocation, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    invocation_timeout_ms: u64,
    /// Memory cap of one actor instance, in MiB.
    #[arg(long, default_value_t = 64)]
    max_memory_mb: u64,
    /// Actor instances the worker reserves room for.
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Calls of one actor that may wait for a free instance; more are answered "busy".
    #[arg(long, default_value_t = wire::worker::DEFAULT_MAX_QUEUED_CALLS)] // runtime: issue 15
    max_queued_calls: u32,
    /// Apply this manifest (actors, providers, links) once the host is up.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// How often each provider's health is checked, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    health_interval_ms: u64,
    /// Log filter, for example `info` or `host_core=debug`.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log_level: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new public key and its seed.
    Gen { kind: KeyKind },
}

#[derive(Subcommand)]
enum ClaimsCommand {
    /// Embed signed claims in an actor.
    Sign(Box<SignArgs>),
    /// Show an actor's claims.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SignArgs {
    input: PathBuf,
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long)]
    name: String,
    /// A capability contract the actor may call (repeatable).
    #[arg(long = "cap", value_name = "CONTRACT")]
    caps: Vec<String>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    call_alias: Option<String>,
    #[arg(long)]
    rev: Option<i32>,
    #[arg(long)]
    ver: Option<String>,
    #[arg(long)]
    expires_in_days: Option<u64>,
    #[arg(long)]
    not_before_days: Option<u64>,
    #[command(flatten)]
    keys: SigningKeys,
}

/// Which keys sign an actor or an archive.
#[derive(clap::Args)]
struct SigningKeys {
    /// File holding the account seed that signs (default: a key kept in the key directory).
    #[arg(long)]
    issuer: Option<PathBuf>,
    /// File holding the subject's seed: the actor's module key or the
    /// provider's service key (default: one key per name in the key directory).
    #[arg(long)]
    subject: Option<PathBuf>,
    /// Key directory [env: WASMHOST_KEYS_DIR; default ~/.wasmhost/keys].
    #[arg(long)]
    keys_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The running host's state directory [env: WASMHOST_STATE_DIR].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The running host's runtime directory, if it has its own [env: WASMHOST_RUNTIME_DIR].
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// What runs on the host.
    Inventory {
        #[arg(long)]
        json: bool,
    },
    /// Start a signed actor; prints its key.
    StartActor {
        file: PathBuf,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Change an actor's instance count (0 stops it).
    ScaleActor {
        key: String,
        count: u32,
    },
    /// Replace a running actor with a higher revision of itself.
    UpdateActor {
        key: String,
        file: PathBuf,
    },
    StopActor {
        key: String,
    },
    /// Invoke an actor; JSON is sent as MessagePack with named fields.
    Call {
        key: String,
        operation: String,
        json: Option<String>,
    },
    StopHost,
    /// Start a capability provider from its archive; prints its key.
    StartProvider {
        file: PathBuf,
        #[arg(long, default_value = "default")]
        link_name: String,
        /// The provider's configuration, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
    },
    StopProvider {
        key: String,
        #[arg(long, default_value = "default")]
        link_name: String,
    },
    /// Show lifecycle events (CloudEvents JSON, one per line).
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
    },
    /// Manage links between actors and providers.
    Link {
        #[command(subcommand)]
        command: LinkCommand,
    },
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Link an actor to a provider for a contract, with KEY=VALUE values.
    Put {
        actor: String,
        provider: String,
        contract: String,
        #[arg(long, default_value = "default")]
        link_name: String,
        values: Vec<String>,
    },
    Del {
        actor: String,
        contract: String,
        #[arg(long, default_value = "default")]
        link_name: String,
    },
    Ls {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_host(args),
        Command::Keys {
            command: KeysCommand::Gen { kind },
        } => {
            let key = keys::generate(kind);
            println!("Public Key: {}", key.public_key());
            match key.seed() {
                Ok(seed) => {
                    println!("Seed: {seed}");
                    Ok(())
                }
                Err(e) => Err(anyhow!("cannot print the seed: {e}")),
            }
        }
        Command::Claims { command } => claims_command(command),
        Command::Par { command } => par_command(command),
        Command::Ctl(args) => tokio_runtime().and_then(|rt| rt.block_on(ctl(args))),
    };
    if let Err(e) = result {
        // One line, the whole chain of causes.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn claims_command(command: ClaimsCommand) -> Result<()> {
    match command {
        ClaimsCommand::Sign(args) => {
            let wasm = std::fs::read(&args.input)
                .with_context(|| format!("cannot read {}", args.input.display()))?;
            let (issuer, subject) = keys::signing_pair(
                args.keys.keys_dir.clone(),
                args.keys.issuer.as_deref(),
                args.keys.subject.as_deref(),
                &args.name,
                KeyKind::Module,
            )?;
            let options = SignOptions {
                name: args.name,
                caps: args.caps,
                tags: args.tags,
                call_alias: args.call_alias,
                rev: args.rev,
                ver: args.ver,
                expires_in_days: args.expires_in_days,
                not_before_days: args.not_before_days,
            };
            let signed = claims::sign(&wasm, &options, &issuer, &subject)?;
            std::fs::write(&args.output, signed)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            println!("{}", subject.public_key());
            Ok(())
        }
        ClaimsCommand::Inspect { file, json } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (claims, report) = claims::inspect(&wasm)?;
            let meta = claims.metadata.clone().unwrap_or_default();
            if json {
                let value = serde_json::json!({
                    "key": claims.subject,
                    "issuer": claims.issuer,
                    "name": meta.name,
                    "kind": if claims::is_component(&wasm) { "component" } else { "module" },
                    "caps": meta.caps.unwrap_or_default(),
                    "tags": meta.tags.unwrap_or_default(),
                    "rev": meta.rev,
                    "ver": meta.ver,
                    "call_alias": meta.call_alias,
                    "hash": meta.module_hash,
                    "issued_at": claims.issued_at,
                    "expires": claims.expires,
                    "not_before": claims.not_before,
                    "validation": report,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("Actor        {}", claims.subject);
                println!("Name         {}", meta.name.as_deref().unwrap_or("-"));
                println!("Issuer       {}", claims.issuer);
                println!(
                    "Kind         {}",
                    if claims::is_component(&wasm) {
                        "component"
                    } else {
                        "module"
                    }
                );
                println!(
                    "Capabilities {}",
                    meta.caps
                        .map(|c| c.join(", "))
                        .unwrap_or_else(|| "none".into())
                );
                println!(
                    "Revision     {}",
                    meta.rev
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                println!("Version      {}", meta.ver.as_deref().unwrap_or("-"));
                println!("Call alias   {}", meta.call_alias.as_deref().unwrap_or("-"));
                println!("Expires      {}", report.expires);
                println!("Valid from   {}", report.valid_from);
                println!(
                    "Signature    {}",
                    if report.signature_valid {
                        "valid"
                    } else {
                        "INVALID"
                    }
                );
                println!(
                    "Hash         {}",
                    if report.hash_valid {
                        "matches the wasm"
                    } else {
                        "DOES NOT MATCH the wasm"
                    }
                );
            }
            Ok(())
        }
    }
}

fn par_command(command: ParCommand) -> Result<()> {
    match command {
        ParCommand::Create(args) => {
            let (issuer, subject) = keys::signing_pair(
                args.keys.keys_dir.clone(),
                args.keys.issuer.as_deref(),
                args.keys.subject.as_deref(),
                &args.name,
                KeyKind::Service,
            )?;
            let mut targets = Vec::new();
            for spec in &args.targets {
                let (target, path) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--target `{spec}` is not TARGET=BINARY"))?;
                let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
                targets.push((target.to_owned(), bytes));
            }
            par::create(
                &par::CreateOptions {
                    name: args.name,
                    vendor: args.vendor,
                    capid: args.capid,
                    rev: args.rev,
                    ver: args.ver,
                    targets,
                },
                &issuer,
                &subject,
                &args.output,
            )?;
            println!("{}", subject.public_key());
            Ok(())
        }
        ParCommand::Inspect { file, json } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let archive = par::read(&bytes)?;
            let verdict = par::verify_claims(&archive);
            let meta = archive.metadata();
            let targets: Vec<&String> = archive.binaries.keys().collect();
            if json {
                let value = serde_json::json!({
                    "key": archive.key(),
                    "issuer": archive.claims.issuer,
                    "name": meta.name,
                    "vendor": meta.vendor,
                    "capid": meta.capid,
                    "rev": meta.rev,
                    "ver": meta.ver,
                    "targets": targets,
                    "target_hashes": meta.target_hashes,
                    "valid": verdict.is_ok(),
                    "problem": verdict.as_ref().err().map(|e| e.to_string()),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("Provider     {}", archive.key());
                println!("Name         {}", meta.name.as_deref().unwrap_or("-"));
                println!("Vendor       {}", meta.vendor);
                println!("Contract     {}", meta.capid);
                println!("Issuer       {}", archive.claims.issuer);
                println!(
                    "Revision     {}",
                    meta.rev
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "-".into())
                );
                println!("Version      {}", meta.ver.as_deref().unwrap_or("-"));
                println!(
                    "Targets      {}",
                    targets
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                match &verdict {
                    Ok(()) => println!("Claims       valid"),
                    Err(e) => println!("Claims       INVALID: {e}"),
                }
            }
            Ok(())
        }
    }
}

fn run_host(args: RunArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("bad --log-level `{}`", args.log_level))?,
        )
        .with_writer(std::io::stderr)
        .init();
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
        max_queued_calls: args.max_queued_calls, // runtime: issue 15
        health_interval: Duration::from_millis(args.health_interval_ms.max(100)),
    };
    // A bad manifest stops us before anything starts.
    let manifest = match &args.manifest {
        Some(path) => Some(manifest::load(
            path,
            &config.allowed_issuers,
            &paths.provider_cache(),
        )?),
        None => None,
    };
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let host = Host::new(config, host_paths);
        let supervisor = host.start().await?;
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
        notify_systemd(&host);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut shutdown = host.shutdown_signal();
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
            _ = crate::host::stopped(&mut shutdown) => tracing::info!("stop requested: stopping"),
        }
        host.events.publish("host_stopped", serde_json::json!({"host_id": host.key.public_key()}));
        host.request_shutdown();
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
fn notify_systemd(host: &std::sync::Arc<Host>) {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify: {e}");
    }
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let host = host.clone();
        let period = Duration::from_micros(usec / 2);
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

fn read_wasm(path: &Path) -> Result<Bytes> {
    Ok(Bytes::from(std::fs::read(path).with_context(|| {
        format!("cannot read {}", path.display())
    })?))
}

async fn ctl(args: CtlArgs) -> Result<()> {
    let state = paths::state_dir(args.state_dir)?;
    let run = paths::runtime_dir(args.runtime_dir, &state);
    let paths = StatePaths::new(state, run);
    let mut client = control::ControlClient::connect(&paths.control_socket()).await?;
    let (request, json_inventory) = match args.command {
        CtlCommand::Inventory { json } => (ControlRequest::Inventory, json),
        CtlCommand::StartActor { file, count } => (
            ControlRequest::StartActor {
                wasm: read_wasm(&file)?,
                count,
            },
            false,
        ),
        CtlCommand::ScaleActor { key, count } => (ControlRequest::ScaleActor { key, count }, false),
        CtlCommand::UpdateActor { key, file } => (
            ControlRequest::UpdateActor {
                key,
                wasm: read_wasm(&file)?,
            },
            false,
        ),
        CtlCommand::StopActor { key } => (ControlRequest::StopActor { key }, false),
        CtlCommand::Call {
            key,
            operation,
            json,
        } => {
            let payload = match json {
                Some(text) => {
                    let value: serde_json::Value =
                        serde_json::from_str(&text).context("the payload is not valid JSON")?;
                    rmp_serde::to_vec_named(&value)?
                }
                None => Vec::new(),
            };
            (
                ControlRequest::Call {
                    key,
                    operation,
                    payload: Bytes::from(payload),
                },
                false,
            )
        }
        CtlCommand::StopHost => (ControlRequest::StopHost, false),
        CtlCommand::StartProvider {
            file,
            link_name,
            config,
        } => {
            let path = std::fs::canonicalize(&file)
                .with_context(|| format!("cannot find {}", file.display()))?;
            (
                ControlRequest::StartProvider {
                    path: path.display().to_string(),
                    link_name,
                    config_json: config,
                },
                false,
            )
        }
        CtlCommand::StopProvider { key, link_name } => {
            (ControlRequest::StopProvider { key, link_name }, false)
        }
        CtlCommand::Events { follow } => {
            let mut reply = client.request(&ControlRequest::Events { follow }).await?;
            loop {
                if let ControlReply::Events(events) = reply {
                    for event in events {
                        println!("{event}");
                    }
                }
                if !follow {
                    return Ok(());
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                reply = match client.next_reply().await {
                    Ok(reply) => reply,
                    // The host stopped: the stream ends there.
                    Err(_) => return Ok(()),
                };
            }
        }
        CtlCommand::Link { command } => match command {
            LinkCommand::Put {
                actor,
                provider,
                contract,
                link_name,
                values,
            } => {
                let mut map = std::collections::BTreeMap::new();
                for pair in values {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| anyhow!("link value `{pair}` is not KEY=VALUE"))?;
                    map.insert(k.to_owned(), v.to_owned());
                }
                (
                    ControlRequest::LinkPut(wire::provider::Link {
                        actor_id: actor,
                        provider_id: provider,
                        contract_id: contract,
                        link_name,
                        values: map,
                    }),
                    false,
                )
            }
            LinkCommand::Del {
                actor,
                contract,
                link_name,
            } => (
                ControlRequest::LinkDel {
                    actor_id: actor,
                    contract_id: contract,
                    link_name,
                },
                false,
            ),
            LinkCommand::Ls { json } => (ControlRequest::LinkList, json),
        },
    };
    match client.request(&request).await? {
        ControlReply::Done => {}
        ControlReply::ActorStarted { key } => println!("{key}"),
        ControlReply::CallResult(bytes) => print_reply(&bytes)?,
        ControlReply::Inventory(inventory) => print_inventory(&inventory, json_inventory)?,
        ControlReply::ProviderStarted { key } => println!("{key}"),
        ControlReply::Events(events) => {
            for event in events {
                println!("{event}");
            }
        }
        ControlReply::Links(links) => {
            if json_inventory {
                println!("{}", serde_json::to_string_pretty(&links)?);
            } else if links.is_empty() {
                println!("No links.");
            } else {
                println!(
                    "{:<56}  {:<56}  {:<24} {:<10} VALUES",
                    "ACTOR", "PROVIDER", "CONTRACT", "LINK NAME"
                );
                for l in links {
                    let values: Vec<String> =
                        l.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<56}  {:<56}  {:<24} {:<10} {}",
                        l.actor_id,
                        l.provider_id,
                        l.contract_id,
                        l.link_name,
                        values.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Prints an actor's reply as JSON when it is MessagePack, else as text.
fn print_reply(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut cursor = bytes;
    match rmpv::decode::read_value(&mut cursor) {
        Ok(value) if cursor.is_empty() => println!("{}", msgpack_to_json(value)),
        _ => {
            std::io::stdout().write_all(bytes)?;
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                println!();
            }
        }
    }
    Ok(())
}

fn msgpack_to_json(value: rmpv::Value) -> serde_json::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    match value {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .unwrap_or(J::Null),
        M::F32(f) => J::from(f64::from(f)),
        M::F64(f) => J::from(f),
        M::String(s) => J::String(s.into_str().unwrap_or_default()),
        // Bytes show as text when they are UTF-8 (an HTTP body, say).
        M::Binary(b) => match String::from_utf8(b) {
            Ok(text) => J::String(text),
            Err(e) => J::Array(e.into_bytes().into_iter().map(J::from).collect()),
        },
        M::Array(items) => J::Array(items.into_iter().map(msgpack_to_json).collect()),
        M::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, msgpack_to_json(v))
                })
                .collect(),
        ),
        M::Ext(_, data) => J::Array(data.into_iter().map(J::from).collect()),
    }
}

fn print_inventory(inventory: &Inventory, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inventory_json(inventory))?
        );
        return Ok(());
    }
    println!(
        "Host {}  (up {} s)",
        inventory.host_id, inventory.uptime_secs
    );
    println!();
    println!("{:<16} {:>8} {:>9}  STATE", "PROCESS", "PID", "RESTARTS");
    for p in &inventory.processes {
        let pid = p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!("{:<16} {:>8} {:>9}  {}", p.name, pid, p.restarts, p.state);
    }
    println!();
    if inventory.providers.is_empty() {
        println!("No providers.");
    } else {
        println!(
            "{:<56}  {:<20} {:<10} {:<24} {:>8} {:<11} HEALTH",
            "PROVIDER", "NAME", "LINK NAME", "CONTRACT", "PID", "STATE"
        );
        for p in &inventory.providers {
            let pid = p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<56}  {:<20} {:<10} {:<24} {:>8} {:<11} {}",
                p.key, p.name, p.link_name, p.contract_id, pid, p.state, p.health
            );
        }
    }
    println!();
    if inventory.actors.is_empty() {
        println!("No actors.");
    } else {
        println!(
            "{:<56}  {:<20} {:<9} {:>5}  CAPS",
            "ACTOR", "NAME", "KIND", "COUNT"
        );
        for a in &inventory.actors {
            let kind = match a.kind {
                wire::control::ActorKind::Module => "module",
                wire::control::ActorKind::Component => "component",
            };
            println!(
                "{:<56}  {:<20} {:<9} {:>5}  {}",
                a.key,
                a.name,
                kind,
                a.count,
                a.caps.join(",")
            );
        }
    }
    Ok(())
}

fn inventory_json(inventory: &Inventory) -> serde_json::Value {
    serde_json::json!({
        "host_id": inventory.host_id,
        "uptime_secs": inventory.uptime_secs,
        "processes": inventory.processes.iter().map(|p| serde_json::json!({
            "name": p.name, "pid": p.pid, "restarts": p.restarts, "state": p.state.as_str(),
        })).collect::<Vec<_>>(),
        "actors": inventory.actors.iter().map(|a| serde_json::json!({
            "key": a.key,
            "name": a.name,
            "kind": match a.kind { wire::control::ActorKind::Module => "module", wire::control::ActorKind::Component => "component" },
            "issuer": a.issuer,
            "rev": a.rev,
            "ver": a.ver,
            "call_alias": a.call_alias,
            "caps": a.caps,
            "count": a.count,
        })).collect::<Vec<_>>(),
        "providers": inventory.providers.iter().map(|p| serde_json::json!({
            "key": p.key,
            "name": p.name,
            "link_name": p.link_name,
            "contract_id": p.contract_id,
            "pid": p.pid,
            "state": p.state.as_str(),
            "health": p.health,
            "restarts": p.restarts,
        })).collect::<Vec<_>>(),
    })
}
