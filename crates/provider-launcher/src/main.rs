//! `provider-launcher --socket PATH`: the process `host-core` starts to fork
//! its capability providers. It connects back to the host's socket, proves
//! itself with the token from `PROVIDER_LAUNCHER_TOKEN`, and serves until the
//! host goes away; then it kills every provider and exits.

use anyhow::{bail, Context};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use wire::handshake::{self, Role};

const TOKEN_ENV: &str = "PROVIDER_LAUNCHER_TOKEN";

fn main() -> anyhow::Result<()> {
    let parent = std::os::unix::process::parent_id();
    // First of all: no process of our user (a provider among them) may read
    // our memory, environment (the token) or descriptors (the sealed images
    // and the host channel) through /proc, nor ptrace us.
    set_not_dumpable()?;
    ensure_std_fds();
    // A catchable signal, unlike the worker's SIGKILL: the launcher must
    // take its providers down with it.
    set_parent_death_signal(libc::SIGTERM)?;
    let now = std::os::unix::process::parent_id();
    if now != parent || now == 1 {
        // host-core died before the request took effect; nothing runs yet.
        std::process::exit(0);
    }

    let socket = parse_args()?;
    let token = std::env::var(TOKEN_ENV).with_context(|| format!("{TOKEN_ENV} is not set"))?;
    // Still single-threaded here, so changing the environment is sound.
    // Providers get a clean environment anyway; this keeps the secret out of
    // /proc/PID/environ readers' way as far as we can.
    std::env::remove_var(TOKEN_ENV);

    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("provider-launcher")
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(serve(socket, token))
}

fn set_not_dumpable() -> anyhow::Result<()> {
    prctl_set(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
}

fn set_parent_death_signal(sig: libc::c_int) -> anyhow::Result<()> {
    prctl_set(
        libc::PR_SET_PDEATHSIG,
        sig as libc::c_ulong,
        "PR_SET_PDEATHSIG",
    )
}

/// `prctl(option, value, 0, 0, 0)` for the options that only set an
/// attribute of this process from one integer.
fn prctl_set(option: libc::c_int, value: libc::c_ulong, name: &str) -> anyhow::Result<()> {
    // SAFETY: PR_SET_DUMPABLE and PR_SET_PDEATHSIG take an integer by value
    // and no pointers; the call only changes this process's own attributes.
    let rc = unsafe {
        libc::prctl(
            option,
            value,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        bail!("prctl({name}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes sure descriptors 0..2 are open, so no pipe or socket of ours ever
/// lands on them.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: opens /dev/null from a NUL-terminated static string; the
            // lowest free descriptor, i.e. `fd`, is used and kept for good.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

fn parse_args() -> anyhow::Result<String> {
    let mut args = std::env::args().skip(1);
    let mut socket = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = Some(args.next().context("--socket needs a path")?),
            s if s.starts_with("--socket=") => socket = Some(s["--socket=".len()..].to_owned()),
            "-h" | "--help" => {
                println!("usage: provider-launcher --socket PATH   (token in ${TOKEN_ENV})");
                std::process::exit(0);
            }
            other => {
                bail!("unexpected argument {other:?}; usage: provider-launcher --socket PATH")
            }
        }
    }
    socket.context("missing --socket PATH")
}

async fn serve(socket: String, token: String) -> anyhow::Result<()> {
    // Installed before anything else: from here on SIGTERM (the parent-death
    // signal) means "clean up and exit", not "die at once".
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = hup.recv() => break,
                // A terminal's Ctrl-C reaches the whole foreground group.
                // host-core gets it too and stops the providers in order
                // (their Shutdown first), then closes our channel; ending
                // here would kill them without notice and stall its stop.
                _ = int.recv() => tracing::debug!("interrupted: host-core drives the shutdown"),
            }
        }
    };

    let name = socket
        .as_str()
        .to_fs_name::<GenericFilePath>()
        .with_context(|| format!("invalid socket path {socket}"))?;
    let stream = Stream::connect(name)
        .await
        .with_context(|| format!("cannot connect to {socket}"))?;
    let (mut reader, mut writer) = wire::socket::split_local(stream)?;
    handshake::connect(&mut reader, &mut writer, Role::Launcher, &token)
        .await
        .context("handshake with host-core failed")?;
    drop(token);
    tracing::info!(pid = std::process::id(), "connected to host-core");
    provider_launcher::run_with(
        reader,
        writer,
        provider_launcher::Options::default(),
        shutdown,
    )
    .await?;
    tracing::info!("exiting");
    Ok(())
}
