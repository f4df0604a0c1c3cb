//! The command line: every subcommand and flag of `host-core`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use host_core::keys::KeyKind;

#[derive(Parser)]
#[command(
    name = "host-core",
    version,
    about = "A process-isolated WebAssembly actor host in the model of wasmCloud"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the host in the foreground.
    Run(Box<RunArgs>),
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
    /// Push a signed actor or a provider archive to an OCI registry (as `wash push`).
    Push(PushArgs),
    /// Pull an actor or a provider archive from an OCI registry (as `wash pull`).
    Pull(PullArgs),
}

/// A registry client's rules and credentials, for `push` and `pull`.
#[derive(clap::Args)]
pub(crate) struct RegistryArgs {
    /// Speak plain HTTP to the registry (for a local one).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Allow the tag `latest`.
    #[arg(long)]
    pub(crate) allow_latest: bool,
    /// Registry user name.
    #[arg(long, env = "WASH_REG_USER")]
    pub(crate) user: Option<String>,
    /// Registry password.
    #[arg(long, env = "WASH_REG_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// Where the digest cache lives [env: WASMHOST_STATE_DIR].
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct PushArgs {
    /// registry/repository:tag (`oci://` optional).
    pub(crate) reference: String,
    /// A signed actor (.wasm) or a provider archive (.par.gz).
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
}

#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// registry/repository:tag or registry/repository@sha256:DIGEST.
    pub(crate) reference: String,
    /// Where to write what was pulled.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
}

#[derive(Subcommand)]
pub(crate) enum ParCommand {
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
pub(crate) struct ParCreateArgs {
    #[arg(long)]
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) vendor: String,
    /// The contract the provider implements, e.g. wasmcloud:keyvalue.
    #[arg(long)]
    pub(crate) capid: String,
    /// TARGET=BINARY, e.g. x86_64-linux=target/release/my-provider (repeatable).
    #[arg(long = "target", value_name = "TARGET=BIN", required = true)]
    pub(crate) targets: Vec<String>,
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    #[arg(long)]
    pub(crate) rev: Option<i32>,
    #[arg(long)]
    pub(crate) ver: Option<String>,
    #[command(flatten)]
    pub(crate) keys: SigningKeys,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Where the host keeps its data and caches [env: WASMHOST_STATE_DIR].
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Where the host keeps its sockets [env: WASMHOST_RUNTIME_DIR; default: the state dir].
    #[arg(long)]
    pub(crate) runtime_dir: Option<PathBuf>,
    /// Only actors signed by these accounts may start (default: any issuer).
    #[arg(long = "allowed-issuer", value_name = "ACCOUNT_KEY")]
    pub(crate) allowed_issuers: Vec<String>,
    /// Deadline of one actor invocation, in milliseconds (1 to 3600000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) invocation_timeout_ms: u64,
    /// Memory cap of one actor instance, in MiB (1 to 65536).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub(crate) max_memory_mb: u64,
    /// Actor instances the worker reserves room for (1 to 100000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) max_instances: u32,
    /// Calls of one actor that may wait for a free instance; more are answered "busy".
    #[arg(long, default_value_t = wire::worker::DEFAULT_MAX_QUEUED_CALLS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_queued_calls: u32,
    /// Apply this manifest (actors, providers, links) once the host is up.
    #[arg(long)]
    pub(crate) manifest: Option<PathBuf>,
    /// How often each provider's health is checked, in milliseconds (100 to 86400000).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub(crate) health_interval_ms: u64,
    /// Log filter, for example `info` or `host_core=debug`.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    pub(crate) log_level: String,
    #[command(flatten)]
    pub(crate) lattice: LatticeArgs,
    #[command(flatten)]
    pub(crate) oci: OciArgs,
}

/// Pulling actors and archives from OCI registries.
#[derive(clap::Args)]
pub(crate) struct OciArgs {
    /// Allow the tag `latest` (explicit, or a reference without a tag).
    #[arg(long, env = "WASMCLOUD_OCI_ALLOW_LATEST")]
    pub(crate) oci_allow_latest: bool,
    /// Registries (host[:port]) that may be spoken to over plain HTTP (comma-separated or repeated).
    #[arg(
        long,
        value_name = "REGISTRY",
        value_delimiter = ',',
        env = "WASMCLOUD_OCI_ALLOWED_INSECURE"
    )]
    pub(crate) oci_allowed_insecure: Vec<String>,
    /// The registry --oci-user and --oci-password are for.
    #[arg(long, value_name = "REGISTRY", env = "OCI_REGISTRY")]
    pub(crate) oci_registry: Option<String>,
    /// User name for --oci-registry.
    #[arg(long, env = "OCI_REGISTRY_USER", requires = "oci_registry")]
    pub(crate) oci_user: Option<String>,
    /// Password for --oci-registry.
    #[arg(
        long,
        env = "OCI_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "oci_user"
    )]
    pub(crate) oci_password: Option<String>,
}

/// Joining a lattice of hosts over NATS. Without `--nats` the host runs
/// alone and opens no network connection of its own.
#[derive(clap::Args)]
pub(crate) struct LatticeArgs {
    /// Join the lattice through this NATS server (nats://host:port).
    #[arg(long, value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// The lattice's name.
    #[arg(long, default_value = "default", env = "WASMCLOUD_LATTICE")]
    pub(crate) lattice: String,
    /// The JetStream domain of the lattice's state.
    #[arg(long, value_name = "DOMAIN", env = "WASMCLOUD_JS_DOMAIN")]
    pub(crate) js_domain: Option<String>,
    /// A label of this host, KEY=VALUE (repeatable); auctions match constraints against them.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// The host's seed (SN...); default: one kept in the state directory.
    #[arg(
        long,
        value_name = "SEED",
        env = "WASMCLOUD_HOST_SEED",
        hide_env_values = true
    )]
    pub(crate) host_seed: Option<String>,
    /// The seed (SC...) that signs this host's invocations; default: one kept in the state directory.
    #[arg(
        long,
        value_name = "SEED",
        env = "WASMCLOUD_CLUSTER_SEED",
        hide_env_values = true
    )]
    pub(crate) cluster_seed: Option<String>,
    /// Cluster keys (C...) whose invocations this host accepts, besides its own (comma-separated or repeated).
    #[arg(
        long,
        value_name = "KEY",
        value_delimiter = ',',
        env = "WASMCLOUD_CLUSTER_ISSUERS"
    )]
    pub(crate) cluster_issuers: Vec<String>,
    /// A NATS credentials file (JWT and seed).
    #[arg(long, value_name = "FILE")]
    pub(crate) nats_creds: Option<PathBuf>,
    /// Let the control interface start actors and providers from files on this host.
    #[arg(long)]
    pub(crate) allow_file_load: bool,
    /// How often the host publishes its heartbeat, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub(crate) heartbeat_interval_ms: u64,
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a new public key and its seed.
    Gen { kind: KeyKind },
}

#[derive(Subcommand)]
pub(crate) enum ClaimsCommand {
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
pub(crate) struct SignArgs {
    pub(crate) input: PathBuf,
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    #[arg(long)]
    pub(crate) name: String,
    /// A capability contract the actor may call (repeatable).
    #[arg(long = "cap", value_name = "CONTRACT")]
    pub(crate) caps: Vec<String>,
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    #[arg(long)]
    pub(crate) call_alias: Option<String>,
    #[arg(long)]
    pub(crate) rev: Option<i32>,
    #[arg(long)]
    pub(crate) ver: Option<String>,
    #[arg(long, conflicts_with = "expires_in_secs")]
    pub(crate) expires_in_days: Option<u64>,
    /// The claims expire this many seconds from now (for short-lived actors and tests).
    #[arg(long, hide = true)]
    pub(crate) expires_in_secs: Option<u64>,
    #[arg(long)]
    pub(crate) not_before_days: Option<u64>,
    #[command(flatten)]
    pub(crate) keys: SigningKeys,
}

/// Which keys sign an actor or an archive.
#[derive(clap::Args)]
pub(crate) struct SigningKeys {
    /// File holding the account seed that signs (default: a key kept in the key directory).
    #[arg(long)]
    pub(crate) issuer: Option<PathBuf>,
    /// File holding the subject's seed: the actor's module key or the
    /// provider's service key (default: one key per name in the key directory).
    #[arg(long)]
    pub(crate) subject: Option<PathBuf>,
    /// Key directory [env: WASMHOST_KEYS_DIR; default ~/.wasmhost/keys].
    #[arg(long)]
    pub(crate) keys_dir: Option<PathBuf>,
}

impl SigningKeys {
    /// The issuer's and the subject's keys for `name`, as these flags say.
    pub(crate) fn pair(
        &self,
        name: &str,
        kind: host_core::keys::KeyKind,
    ) -> anyhow::Result<(nkeys::KeyPair, nkeys::KeyPair)> {
        host_core::keys::signing_pair(
            self.keys_dir.clone(),
            self.issuer.as_deref(),
            self.subject.as_deref(),
            name,
            kind,
        )
    }
}

#[derive(clap::Args)]
pub(crate) struct CtlArgs {
    /// The running host's state directory [env: WASMHOST_STATE_DIR].
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// The running host's runtime directory, if it has its own [env: WASMHOST_RUNTIME_DIR].
    #[arg(long)]
    pub(crate) runtime_dir: Option<PathBuf>,
    /// Speak to the lattice behind this NATS server instead of one host's
    /// socket (wasmCloud 0.82's control interface, so any 0.82 host answers).
    #[arg(long, value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// The lattice's name (with --nats).
    #[arg(long, default_value = "default", env = "WASMCLOUD_LATTICE")]
    pub(crate) lattice: String,
    /// With --nats: the host (N...) a command or `inventory` is for.
    #[arg(long, value_name = "HOST_ID")]
    pub(crate) host: Option<String>,
    #[command(subcommand)]
    pub(crate) command: CtlCommand,
}

#[derive(Subcommand)]
pub(crate) enum CtlCommand {
    /// What runs on the host.
    Inventory {
        #[arg(long)]
        json: bool,
    },
    /// With --nats: the hosts of the lattice.
    Hosts {
        #[arg(long)]
        json: bool,
    },
    /// Start a signed actor from a file or an OCI reference; prints its key.
    StartActor {
        #[arg(value_name = "FILE|REF")]
        actor: String,
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
        #[arg(value_name = "FILE|REF")]
        actor: String,
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
    /// Start a capability provider from its archive's file or an OCI reference; prints its key.
    StartProvider {
        #[arg(value_name = "FILE|REF")]
        archive: String,
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
pub(crate) enum LinkCommand {
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
