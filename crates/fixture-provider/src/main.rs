//! `fixture-provider`: a capability provider for the end-to-end tests, built
//! on `shim`. It serves whatever contract id its bootstrap names; its config
//! JSON picks its behaviour:
//!
//! - `mode`: `"echo"` (the default and only mode).
//! - `fork_grandchild`: at init, start `sleep 1000` in the provider's process
//!   group and never wait for it (the launcher must clean it up).
//! - `escape_group`: at init, start `setsid sleep 1000`, which leaves the group.
//! - `ignore_sigterm`: ignore SIGTERM, so only SIGKILL stops the provider.
//! - `crash_on_start`: exit with status 3 right after reading the bootstrap.
//! - `crash_if_exists`: a path; exit with status 3 at start whenever that file
//!   exists (a provider that starts fine, then crash-loops once it is created).
//! - `unhealthy`: health checks report unhealthy.
//! - `attacks`: TEST ONLY. A list of `{name, kind, target}` the provider
//!   tries at start, as a hostile provider would, before it serves; each
//!   outcome (`"ok"` or `"denied: why"`) goes into `attacks.json` in its data
//!   directory (the one place its sandbox lets it write), by name. Kinds:
//!   `read` (a file), `write` (create or overwrite a file), `list` (a
//!   directory), `control` (connect to a host's control socket at `target`
//!   and ask for the inventory), `signal` (SIGWINCH, which these processes
//!   ignore, to pid `target`), `ptrace` (PTRACE_SEIZE pid `target`, then
//!   let go), `environ` (read `/proc/<target>/environ`).
//!
//! Operations: `Echo.Echo` (returns the payload), `Echo.Links` (the links it
//! knows, MessagePack), `Echo.CallBack` (calls an actor through the host),
//! `Echo.Fail` (an error), `KeyValue.Get` (`{value: "fixture", exists: true}`).

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shim::{Health, HostHandle, Link, Provider, ProviderError};

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Config {
    mode: Option<String>,
    fork_grandchild: bool,
    escape_group: bool,
    ignore_sigterm: bool,
    crash_on_start: bool,
    crash_if_exists: Option<String>,
    unhealthy: bool,
    attacks: Vec<Attack>,
}

/// One attempt of `attacks` (tests only).
#[derive(Deserialize, Debug)]
struct Attack {
    name: String,
    kind: String,
    target: String,
}

/// One entry of the `Echo.Links` answer.
#[derive(Serialize, Debug)]
struct LinkInfo {
    actor_id: String,
    link_name: String,
    values: BTreeMap<String, String>,
}

/// The `Echo.CallBack` request: call `operation` on `actor` with `payload`.
#[derive(Deserialize, Debug)]
struct CallBack {
    actor: String,
    operation: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// The answer of `wasmcloud:keyvalue` `KeyValue.Get`.
#[derive(Serialize, Debug)]
struct GetResponse {
    value: String,
    exists: bool,
}

struct Fixture {
    config: Config,
    host: OnceLock<HostHandle>,
    /// Links by (actor, link name).
    links: Mutex<BTreeMap<(String, String), Link>>,
}

fn main() -> ExitCode {
    shim::init_logging();
    let bootstrap = match shim::read_bootstrap() {
        Ok(bootstrap) => bootstrap,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(bootstrap) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixture-provider: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(bootstrap: shim::Bootstrap) -> anyhow::Result<()> {
    let config: Config = match bootstrap.config_json.trim() {
        "" => Config::default(),
        json => serde_json::from_str(json).context("invalid config JSON")?,
    };
    if config
        .crash_if_exists
        .as_deref()
        .is_some_and(|path| std::path::Path::new(path).exists())
    {
        eprintln!("fixture provider crashing on start: the marker file exists");
        std::process::exit(3);
    }
    if config.crash_on_start {
        eprintln!("fixture provider crashing on start, as configured");
        std::process::exit(3);
    }
    match config.mode.as_deref() {
        None | Some("echo") => {}
        Some(other) => bail!("unknown mode {other:?} (expected \"echo\")"),
    }
    if config.ignore_sigterm {
        ignore_sigterm()?;
    }
    if !config.attacks.is_empty() {
        attack(&config.attacks, &bootstrap.data_dir)?;
    }
    tracing::info!(
        "fixture provider started, link name {}, contract {}, pid {}",
        bootstrap.link_name,
        bootstrap.contract_id,
        std::process::id()
    );
    let fixture = Fixture {
        config,
        host: OnceLock::new(),
        links: Mutex::new(BTreeMap::new()),
    };
    shim::run_with_bootstrap(fixture, bootstrap)?;
    tracing::info!("fixture provider stopped");
    Ok(())
}

/// Tries every attack and writes the outcomes to `{data_dir}/attacks.json`
/// (whole, by rename, so a reader never sees half of it).
fn attack(attacks: &[Attack], data_dir: &str) -> anyhow::Result<()> {
    let mut outcomes = BTreeMap::new();
    for a in attacks {
        let outcome = match try_attack(a) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("denied: {e:#}"),
        };
        tracing::info!("attack {}: {outcome}", a.name);
        outcomes.insert(a.name.clone(), outcome);
    }
    let dir = std::path::Path::new(data_dir);
    let tmp = dir.join("attacks.json.partial");
    std::fs::write(&tmp, serde_json::to_vec(&outcomes)?)?;
    std::fs::rename(&tmp, dir.join("attacks.json"))?;
    Ok(())
}

fn try_attack(a: &Attack) -> anyhow::Result<()> {
    let pid = || -> anyhow::Result<libc::pid_t> { Ok(a.target.parse()?) };
    match a.kind.as_str() {
        "read" => drop(std::fs::read(&a.target)?),
        "write" => std::fs::write(&a.target, b"written by a provider")?,
        "list" => drop(std::fs::read_dir(&a.target)?.count()),
        "environ" => drop(std::fs::read(format!("/proc/{}/environ", pid()?))?),
        "signal" => {
            // SAFETY: kill takes integers; SIGWINCH is ignored by default.
            if unsafe { libc::kill(pid()?, libc::SIGWINCH) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        "ptrace" => {
            // SAFETY: PTRACE_SEIZE takes a pid and no pointers (addr and data
            // are 0); it does not stop the tracee. The detach below lets go.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_SEIZE,
                    pid()?,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            // SAFETY: as above; detaching a seized tracee needs no stop.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    pid()?,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
        }
        "control" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let stream = std::os::unix::net::UnixStream::connect(&a.target)?;
                let (mut r, mut w) = wire::socket::split(stream)?;
                tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    wire::handshake::connect(&mut r, &mut w, wire::handshake::Role::Control, "")
                        .await?;
                    let mut tx = wire::FrameWriter::<_, wire::control::ControlRequest>::new(&mut w);
                    tx.send(&wire::control::ControlRequest::Inventory).await?;
                    let mut rx =
                        wire::FrameReader::<_, wire::control::ControlResponse>::new(&mut r);
                    match rx.recv().await? {
                        Some(wire::control::ControlResponse::Ok(_)) => Ok(()),
                        Some(wire::control::ControlResponse::Err(e)) => bail!("refused: {e}"),
                        None => bail!("the host closed the connection"),
                    }
                })
                .await?
            })?;
        }
        other => bail!("unknown attack kind {other:?}"),
    }
    Ok(())
}

fn ignore_sigterm() -> anyhow::Result<()> {
    // SAFETY: SIG_IGN is not a function pointer into this program, so no
    // handler can run at all; setting a disposition is async-signal-safe and
    // we are still single-threaded.
    let previous = unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        bail!("cannot ignore SIGTERM: {}", std::io::Error::last_os_error());
    }
    tracing::info!("fixture provider ignores SIGTERM");
    Ok(())
}

/// Starts `program args` detached from our stdio and never waits for it.
fn spawn_leftover(program: &str, args: &[&str]) -> Result<u32, ProviderError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| ProviderError::new(format!("cannot start {program}: {e}")))?;
    // Dropping a `Child` neither kills nor waits for it: exactly the leak
    // this fixture exists to produce.
    Ok(child.id())
}

impl Fixture {
    fn links(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call_back(&self, payload: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let req: CallBack = rmp_serde::from_slice(payload)
            .map_err(|e| ProviderError::new(format!("bad Echo.CallBack request: {e}")))?;
        let host = self
            .host
            .get()
            .ok_or_else(|| ProviderError::new("not initialised"))?;
        host.call_actor(&req.actor, &req.operation, req.payload)
            .await
    }
}

impl Provider for Fixture {
    async fn init(&self, host: &HostHandle) -> Result<(), ProviderError> {
        let _ = self.host.set(host.clone());
        if self.config.fork_grandchild {
            let pid = spawn_leftover("sleep", &["1000"])?;
            tracing::info!("fixture provider started grandchild pid {pid} in its process group");
        }
        if self.config.escape_group {
            let pid = spawn_leftover("setsid", &["sleep", "1000"])?;
            tracing::info!(
                "fixture provider started grandchild pid {pid} outside its process group"
            );
        }
        Ok(())
    }

    async fn link_added(&self, link: Link) -> Result<(), ProviderError> {
        tracing::info!(
            "fixture provider link added: actor {}, link name {}",
            link.actor_id,
            link.link_name
        );
        self.links()
            .insert((link.actor_id.clone(), link.link_name.clone()), link);
        Ok(())
    }

    async fn link_removed(&self, actor_id: &str, _contract_id: &str, link_name: &str) {
        tracing::info!("fixture provider link removed: actor {actor_id}, link name {link_name}");
        self.links()
            .remove(&(actor_id.to_owned(), link_name.to_owned()));
    }

    async fn invoke(
        &self,
        _actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        match operation {
            "Echo.Echo" => Ok(payload),
            "Echo.Links" => {
                let links: Vec<LinkInfo> = self
                    .links()
                    .values()
                    .map(|l| LinkInfo {
                        actor_id: l.actor_id.clone(),
                        link_name: l.link_name.clone(),
                        values: l.values.clone(),
                    })
                    .collect();
                encode(&links)
            }
            "Echo.CallBack" => self.call_back(&payload).await,
            "Echo.Fail" => Err(ProviderError::new("fixture provider failure")),
            "KeyValue.Get" => encode(&GetResponse {
                value: "fixture".into(),
                exists: true,
            }),
            other => Err(ProviderError::new(format!(
                "fixture provider does not support operation {other}"
            ))),
        }
    }

    async fn health(&self) -> Health {
        if self.config.unhealthy {
            Health::unhealthy("fixture provider configured unhealthy")
        } else {
            Health::ok()
        }
    }

    async fn shutdown(&self) {
        tracing::info!("fixture provider shutting down");
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProviderError> {
    rmp_serde::to_vec_named(value).map_err(|e| ProviderError::new(format!("encode: {e}")))
}
