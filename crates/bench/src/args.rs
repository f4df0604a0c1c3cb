//! The command line, and the settings it selects.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::groups::{group_names, GROUPS};

pub(crate) struct Settings {
    pub(crate) smoke: bool,
    /// `--only GROUP` (calls, http, hop, start, recovery, footprint): just
    /// that group of figures, for profiling one path.
    pub(crate) only: Option<String>,
    /// Calls per latency figure; `--calls N` sets it.
    pub(crate) calls: usize,
    pub(crate) http_secs: f64,
    /// Figures and their baselines run in this many alternating rounds, so
    /// a slow spell of the machine falls on both sides.
    pub(crate) rounds: usize,
    pub(crate) starts: usize,
    pub(crate) recovery_actors: usize,
    pub(crate) footprint_instances: usize,
}

pub(crate) struct Options {
    pub(crate) smoke: bool,
    pub(crate) only: Option<String>,
    pub(crate) calls: Option<usize>,
    pub(crate) json: Option<PathBuf>,
}

impl Options {
    pub(crate) fn settings(&self) -> Settings {
        let mut settings = if self.smoke {
            Settings {
                smoke: true,
                only: self.only.clone(),
                calls: 200,
                http_secs: 0.5,
                rounds: 2,
                starts: 2,
                recovery_actors: 10,
                footprint_instances: 20,
            }
        } else {
            Settings {
                smoke: false,
                only: self.only.clone(),
                calls: 20_000,
                http_secs: 10.0,
                rounds: 5,
                starts: 10,
                recovery_actors: 100,
                footprint_instances: 1000,
            }
        };
        if let Some(calls) = self.calls {
            // More calls than the default, to profile one path for longer.
            settings.calls = calls;
        }
        settings
    }
}

pub(crate) fn usage() -> String {
    format!(
        "usage: bench [--smoke] [--only GROUP] [--calls N] [--json PATH]\n\
         \x20 --smoke       a small, quick run (what `cargo xtask test` runs)\n\
         \x20 --only GROUP  run one group: {}\n\
         \x20 --calls N     calls per latency measurement\n\
         \x20 --json PATH   also write the rows as JSON",
        group_names()
    )
}

/// `None` when help was asked for. Unknown arguments are refused: a typo
/// must not start a full run of several minutes.
pub(crate) fn parse_options(args: &[String]) -> Result<Option<Options>> {
    let mut options = Options {
        smoke: false,
        only: None,
        calls: None,
        json: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--smoke" => options.smoke = true,
            "--only" => {
                let group = value()?;
                if !GROUPS.iter().any(|(name, _)| name == group) {
                    bail!("--only takes one of {}", group_names());
                }
                options.only = Some(group.clone());
            }
            "--calls" => {
                let n = value()?;
                options.calls = Some(
                    n.parse()
                        .with_context(|| format!("--calls needs a number, not {n:?}"))?,
                );
            }
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(Some(options))
}
