//! What our figures are compared with, measured in the same run: a raw
//! Unix-socket echo (in this process, in another, and through a bare relay
//! process), a bare hyper server, NATS request/reply, the spawn of
//! `/bin/true` and the RSS of `sleep`.
//!
//! The servers that run in a process of their own are this binary started
//! with a `--serve-*` argument ([`serve`]).

pub(crate) mod bare_hyper;
pub(crate) mod echo;
pub(crate) mod nats;
mod process;

use std::path::PathBuf;

use anyhow::Result;

pub(crate) use process::{sleep_rss, spawn_true};

/// Runs the baseline server `args` name, if they name one (the bench
/// starts itself so, as `Baseline::spawn`); `None` for a bench run.
pub(crate) fn serve(args: &[String]) -> Option<Result<()>> {
    match args {
        [mode, listen, echo] if mode == "--serve-relay" => {
            // A bare relay process between the client and the echo: the
            // floor of any path with one more process in it, as ours has.
            Some(block_on(echo::raw_relay_server(
                PathBuf::from(listen),
                PathBuf::from(echo),
            )))
        }
        [mode, port] if mode == "--serve-hyper" => Some(
            port.parse()
                .map_err(anyhow::Error::from)
                .and_then(bare_hyper::serve_bare_hyper),
        ),
        // The raw echo in a process of its own, for the cross-process row.
        [mode, path] if mode == "--serve-echo" => {
            Some(block_on(echo::raw_echo_server(PathBuf::from(path))))
        }
        _ => None,
    }
}

fn block_on(server: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server)
}
