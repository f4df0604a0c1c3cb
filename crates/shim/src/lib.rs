//! `shim`: the capability-provider SDK.
//!
//! A capability provider is a native binary that `host-core` starts (through
//! the `provider-launcher`) as its own process. This crate does everything
//! between `main` and the provider's own logic: it reads the [`Bootstrap`] the
//! launcher writes on standard input, connects back to the host's socket,
//! proves itself with the per-launch token, and then serves the host's
//! messages by calling the methods of a [`Provider`].
//!
//! ```no_run
//! use shim::{HostHandle, Link, Provider, ProviderError};
//!
//! struct Echo;
//!
//! impl Provider for Echo {
//!     async fn link_added(&self, link: Link) -> Result<(), ProviderError> {
//!         tracing::info!("linked to {}", link.actor_id);
//!         Ok(())
//!     }
//!     async fn link_removed(&self, _actor: &str, _contract: &str, _link_name: &str) {}
//!     async fn invoke(&self, _actor: &str, op: &str, payload: Vec<u8>) -> Result<Vec<u8>, ProviderError> {
//!         match op {
//!             "Echo.Echo" => Ok(payload),
//!             other => Err(ProviderError::new(format!("unknown operation {other}"))),
//!         }
//!     }
//! }
//!
//! fn main() -> Result<(), shim::ShimError> {
//!     shim::init_logging();
//!     shim::run(Echo)
//! }
//! ```
//!
//! Concurrency: every invocation runs in its own task, so a slow call never
//! blocks another; link changes are applied one at a time, in the order the
//! host sent them; calls from the provider to actors
//! ([`HostHandle::call_actor`]) are correlated by id, many in flight.

use std::future::Future;
use std::io::{IsTerminal, Read};
use std::sync::Arc;
use std::time::Duration;

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use wire::handshake::{self, Role};

mod direct;
mod host;
mod serve;

pub use host::HostHandle;
pub use serve::serve;
/// Decodes MessagePack a peer sent (an actor's payload), at most [`wire::MAX_DEPTH`]
/// levels deep, so a deeply nested payload cannot overflow the stack.
pub use wire::decode;
pub use wire::provider::{Bootstrap, Link};
pub use wire::{CallError, ErrorKind};

/// What a provider binary says when it is not started by a host (for example
/// run by hand from a terminal).
pub const NOT_LAUNCHED_HINT: &str =
    "this is a capability provider; start it with `host-core ctl start-provider`";

/// The bootstrap is a handful of strings and the config JSON.
const BOOTSTRAP_MAX_LEN: usize = 4 * 1024 * 1024;

/// How long `run` waits for leftover tasks when the provider stops.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The behaviour of a capability provider. Implement it and hand a value to
/// [`run`] from `main`.
///
/// All methods take `&self`: the provider is shared by every task serving it,
/// so keep mutable state behind a lock.
pub trait Provider: Send + Sync + 'static {
    /// Called once, before any link, with the host's data (ids, config JSON).
    /// An error stops the provider before it reports ready.
    ///
    /// The host's messages are not read while `init` and the initial
    /// `link_added` calls run, so they must not wait for
    /// [`HostHandle::call_actor`]; keep the handle and use it later.
    fn init(&self, host: &HostHandle) -> impl Future<Output = Result<(), ProviderError>> + Send {
        let _ = host;
        async { Ok(()) }
    }

    /// A link naming this provider was added (or its values changed). An error
    /// is logged; the host is not told.
    fn link_added(&self, link: Link) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// The link (actor, contract, link name) was removed.
    fn link_removed(
        &self,
        actor_id: &str,
        contract_id: &str,
        link_name: &str,
    ) -> impl Future<Output = ()> + Send;

    /// An actor calls the provider: `operation` looks like `KeyValue.Get`, the
    /// payload and the result are MessagePack.
    ///
    /// Calls run concurrently, each in a task of its own, except that a call
    /// arriving on an idle channel is first polled on the task that reads
    /// the channel (a call that completes at once then costs no task
    /// hand-off). So do not block before the first `.await`: until then the
    /// channel's other messages wait.
    fn invoke(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, ProviderError>> + Send;

    /// Answers the host's health checks.
    fn health(&self) -> impl Future<Output = Health> + Send {
        async { Health::ok() }
    }

    /// Called once before the process exits, on a `Shutdown` from the host or
    /// when the host's end of the channel closes.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// An error a provider reports to the host, or that a call to an actor
/// ([`HostHandle::call_actor`]) reports to the provider: a kind and a
/// message. Decide by [`kind`](Self::kind), never by the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(CallError);

impl ProviderError {
    /// The provider's own failure ([`ErrorKind::ProviderFault`]).
    pub fn new(message: impl Into<String>) -> Self {
        Self(CallError::provider_fault(message))
    }

    /// An error of another kind: `NotFound` for a key that does not
    /// exist, `TooLarge` for a value over a bound, and so on.
    pub fn with_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(CallError::new(kind, message))
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn into_message(self) -> String {
        self.0.message
    }

    pub fn into_call_error(self) -> CallError {
        self.0
    }
}

impl From<CallError> for ProviderError {
    fn from(error: CallError) -> Self {
        Self(error)
    }
}

impl From<String> for ProviderError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ProviderError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// The answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub message: String,
}

impl Health {
    pub fn ok() -> Self {
        Self {
            healthy: true,
            message: String::new(),
        }
    }

    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self {
            healthy: false,
            message: message.into(),
        }
    }
}

/// Why a provider process could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Standard input did not carry a bootstrap frame.
    #[error("this is a capability provider; start it with `host-core ctl start-provider` ({0})")]
    Bootstrap(String),
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect to the host at {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("channel to the host failed: {0}")]
    Wire(#[from] wire::WireError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("provider init failed: {0}")]
    Init(#[source] ProviderError),
    #[error("the provider's serving task panicked: {0}")]
    Panicked(String),
}

/// Runs `provider` as this process's capability provider: reads the bootstrap
/// from standard input, then does what [`run_with_bootstrap`] does. Returns
/// when the host shuts the provider down or goes away.
pub fn run<P: Provider>(provider: P) -> Result<(), ShimError> {
    let bootstrap = read_bootstrap()?;
    run_with_bootstrap(provider, bootstrap)
}

/// Like [`run`], for a binary that read the bootstrap itself with
/// [`read_bootstrap`] (to act on its config before connecting).
pub fn run_with_bootstrap<P: Provider>(provider: P, bootstrap: Bootstrap) -> Result<(), ShimError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("provider")
        .build()
        .map_err(ShimError::Runtime)?;
    // Served as a task, on a worker thread: driven by `block_on` itself the
    // loop would sit on the main thread, and every frame would cost a
    // cross-thread wake-up.
    let result = runtime.block_on(async move {
        tokio::spawn(connect_and_serve(Arc::new(provider), bootstrap))
            .await
            .unwrap_or_else(|e| Err(ShimError::Panicked(e.to_string())))
    });
    // Tasks a provider left behind (or blocking reads) must not keep the
    // process alive once the host is done with it.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result
}

async fn connect_and_serve<P: Provider>(
    provider: Arc<P>,
    mut bootstrap: Bootstrap,
) -> Result<(), ShimError> {
    let connect_err = |source| ShimError::Connect {
        socket: bootstrap.socket.clone(),
        source,
    };
    let name = bootstrap
        .socket
        .as_str()
        .to_fs_name::<GenericFilePath>()
        .map_err(connect_err)?;
    let stream = Stream::connect(name).await.map_err(connect_err)?;
    let (mut reader, mut writer) = wire::socket::split_local(stream).map_err(connect_err)?;
    handshake::connect_as(
        &mut reader,
        &mut writer,
        Role::Provider,
        &bootstrap.token,
        &bootstrap.provider_key,
    )
    .await?;
    // The token has done its job; nothing after this needs it.
    bootstrap.token = String::new();
    tracing::debug!(
        provider = %bootstrap.provider_key,
        link_name = %bootstrap.link_name,
        "connected to the host"
    );
    let direct = writer.direct().ok();
    serve::serve_with(provider, bootstrap, reader, writer, direct).await
}

/// Reads the [`Bootstrap`] frame from standard input. A terminal, an empty or
/// a malformed input is a [`ShimError::Bootstrap`], whose message tells a
/// user who ran the binary by hand how providers are started.
pub fn read_bootstrap() -> Result<Bootstrap, ShimError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(ShimError::Bootstrap("standard input is a terminal".into()));
    }
    let mut lock = stdin.lock();
    read_bootstrap_from(&mut lock)
}

/// Reads one bootstrap frame (4-byte big-endian length, MessagePack body)
/// from `input`.
pub fn read_bootstrap_from(input: &mut impl Read) -> Result<Bootstrap, ShimError> {
    let bad = |what: String| ShimError::Bootstrap(what);
    let mut prefix = [0u8; 4];
    input.read_exact(&mut prefix).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("no bootstrap on standard input".into()),
        _ => bad(format!("cannot read standard input: {e}")),
    })?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > BOOTSTRAP_MAX_LEN {
        return Err(bad(format!(
            "bootstrap frame of {len} bytes exceeds {BOOTSTRAP_MAX_LEN}"
        )));
    }
    let mut body = vec![0u8; len];
    input
        .read_exact(&mut body)
        .map_err(|e| bad(format!("truncated bootstrap: {e}")))?;
    let bootstrap: Bootstrap =
        wire::decode(&body).map_err(|e| bad(format!("malformed bootstrap: {e}")))?;
    if bootstrap.socket.is_empty() {
        return Err(bad("the bootstrap names no socket".into()));
    }
    Ok(bootstrap)
}

/// Sends `tracing` output to standard error (the launcher prefixes each line
/// with the provider's key). The filter comes from `RUST_LOG`, `info` by
/// default. Calling it twice is harmless.
#[cfg(feature = "logging")]
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // The host stamps each line it relays (prefixed with our key).
        .without_time()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bootstrap: &Bootstrap) -> Vec<u8> {
        let body = rmp_serde::to_vec_named(bootstrap).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn sample() -> Bootstrap {
        Bootstrap {
            socket: "/tmp/x.sock".into(),
            token: "t".into(),
            host_id: "N".into(),
            provider_key: "V".into(),
            link_name: "default".into(),
            contract_id: "wasmcloud:test".into(),
            config_json: "{}".into(),
            data_dir: "/tmp".into(),
        }
    }

    #[test]
    fn bootstrap_round_trip() {
        let bytes = frame(&sample());
        let b = read_bootstrap_from(&mut bytes.as_slice()).unwrap();
        assert_eq!(b.link_name, "default");
        assert_eq!(b.socket, "/tmp/x.sock");
    }

    #[test]
    fn bad_bootstraps_are_one_line_errors() {
        for input in [
            &b""[..],
            &b"hello there\n"[..],
            &[0, 0, 0, 3, 0xc1, 0xc1, 0xc1][..],
            &[0, 0, 0, 9, 1][..],
        ] {
            let err = read_bootstrap_from(&mut &input[..]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ShimError::Bootstrap(_)), "{msg}");
            assert!(msg.starts_with(NOT_LAUNCHED_HINT), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    /// Found by the fuzzer: a bootstrap of nested maps (an ignored field)
    /// overflowed the stack instead of being refused.
    #[test]
    fn a_deeply_nested_bootstrap_is_an_error() {
        let mut body = Vec::new();
        for _ in 0..2000 {
            body.extend_from_slice(&[0x81, 0xa0]);
        }
        body.push(0xc0);
        let mut input = (body.len() as u32).to_be_bytes().to_vec();
        input.extend_from_slice(&body);
        let err = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || read_bootstrap_from(&mut input.as_slice()).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(err.to_string().contains("depth limit"), "{err}");
    }
}
