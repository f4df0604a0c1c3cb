//! `actor-runtime --socket PATH`: the worker process `host-core` starts. It
//! connects back to the host's socket, proves itself with the token from
//! `ACTOR_RUNTIME_TOKEN`, and serves until the host goes away.

use anyhow::{bail, Context};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use tracing_subscriber::EnvFilter;
use wire::handshake::{self, Role};

const TOKEN_ENV: &str = "ACTOR_RUNTIME_TOKEN";

fn main() -> anyhow::Result<()> {
    // Providers run as our user: they must not read our memory or
    // descriptors through /proc, nor ptrace us.
    wire::peer::hide_from_same_user().context("cannot make the worker undumpable")?;
    die_with_parent()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let socket = parse_args()?;
    let token = std::env::var(TOKEN_ENV).with_context(|| format!("{TOKEN_ENV} is not set"))?;
    // Still single-threaded here, so changing the environment is sound; actors
    // and anything we might spawn must not see the secret.
    std::env::remove_var(TOKEN_ENV);

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("actor-runtime")
        .build()
        .context("cannot start the tokio runtime")?
        // The serving loop runs as a task, on a worker thread: driven by
        // `block_on` itself it would sit on the main thread, and every frame
        // would cost a cross-thread wake-up (measured: 28 us -> 13 us per
        // call in memory).
        .block_on(async move {
            ignore_interrupts()?;
            tokio::spawn(serve(socket, token))
                .await
                .context("the serving task panicked")?
        })
}

/// A terminal's Ctrl-C reaches the whole foreground group, this worker
/// included. host-core gets it too and shuts down in order (it closes our
/// channel last); dying on it here would only race that shutdown.
fn ignore_interrupts() -> anyhow::Result<()> {
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        while interrupts.recv().await.is_some() {
            tracing::debug!("interrupted: host-core drives the shutdown");
        }
    });
    Ok(())
}

/// The worker must not outlive `host-core`: ask for SIGKILL when the parent
/// dies, then check it has not died already (we would then have been
/// reparented before the request took effect).
fn die_with_parent() -> anyhow::Result<()> {
    let parent = std::os::unix::process::parent_id();
    // SAFETY: PR_SET_PDEATHSIG takes a signal number by value and no pointers;
    // the call only changes this process's own attributes.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        bail!(
            "prctl(PR_SET_PDEATHSIG) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    let now = std::os::unix::process::parent_id();
    if now != parent || now == 1 {
        // Our parent is gone: nobody to serve.
        std::process::exit(1);
    }
    Ok(())
}

fn parse_args() -> anyhow::Result<String> {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = Some(args.next().context("--socket needs a path")?),
            s if s.starts_with("--socket=") => socket = Some(s["--socket=".len()..].to_owned()),
            "-h" | "--help" => {
                println!("usage: actor-runtime --socket PATH   (token in ${TOKEN_ENV})");
                std::process::exit(0);
            }
            other => bail!("unexpected argument {other:?}; usage: actor-runtime --socket PATH"),
        }
    }
    socket.context("missing --socket PATH")
}

async fn serve(socket: String, token: String) -> anyhow::Result<()> {
    let name = socket
        .as_str()
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("invalid socket path {socket}"))?;
    let stream = Stream::connect(name)
        .await
        .with_context(|| format!("cannot connect to {socket}"))?;
    let (mut reader, mut writer) = wire::socket::split_local(stream)?;
    handshake::connect(&mut reader, &mut writer, Role::Worker, &token)
        .await
        .context("handshake with host-core failed")?;
    drop(token);
    tracing::info!(pid = std::process::id(), "connected to host-core");
    actor_runtime::run_on_socket(reader, writer).await?;
    tracing::info!("host-core closed the channel; exiting");
    Ok(())
}
