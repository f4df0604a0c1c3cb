//! `bench`: what the process-isolated design costs, each figure beside a
//! baseline measured in the same run (these machines are noisy, so ratios
//! are what compare from run to run).
//!
//! `cargo xtask bench` runs it in release and writes BENCHMARKS-style
//! markdown to stdout and JSON to `target/bench/results.json`. `--smoke`
//! runs every measurement briefly (the test suite does, so it cannot rot).
//!
//! - `args`: the command line and the settings it selects;
//! - `groups`: the one table of groups (`cargo xtask bench` reads it too);
//! - `harness`: the work directory, signed fixtures, hosts, processes that
//!   die with the bench;
//! - `baselines`: what each figure is compared with;
//! - `calls`, `http`, `hop`, `start`, `recovery`, `footprint`: one module
//!   per group of figures;
//! - `stats` and `report`: percentiles, the table and the JSON.

mod args;
mod baselines;
mod calls;
mod footprint;
mod groups;
mod harness;
mod hop;
mod http;
mod recovery;
mod registry;
mod report;
mod start;
mod stats;

use std::{future::Future, pin::Pin};

use anyhow::{Context, Result};

use crate::{args::Settings, groups::GROUPS, harness::Work, report::Row};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(served) = baselines::serve(&args) {
        return served;
    }
    let Some(options) = args::parse_options(&args)? else {
        println!("{}", args::usage());
        return Ok(());
    };
    let settings = options.settings();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(run_all(&settings))?;
    report::print_table(&rows, &settings);
    if let Some(out) = &options.json {
        report::write_json(&rows, out)?;
    }
    Ok(())
}

/// Runs every group, or the one `--only` names, in the table's order.
async fn run_all(s: &Settings) -> Result<Vec<Row>> {
    let work = Work::new()?;
    let mut rows = Vec::new();
    for (group, description) in GROUPS {
        if s.only.as_deref().is_some_and(|only| only != *group) {
            continue;
        }
        eprintln!("bench: {description}");
        let measure = measurements(group).with_context(|| format!("no group {group}"))?;
        rows.extend(measure(&work, s).await?);
    }
    let _ = std::fs::remove_dir_all(&work.dir);
    Ok(rows)
}

type Measurements =
    for<'a> fn(&'a Work, &'a Settings) -> Pin<Box<dyn Future<Output = Result<Vec<Row>>> + 'a>>;

/// The figures of `group`.
fn measurements(group: &str) -> Option<Measurements> {
    let measure: Measurements = match group {
        "calls" => |work, s| Box::pin(calls::run(work, s)),
        "http" => |work, s| Box::pin(http::run(work, s)),
        "hop" => |work, s| Box::pin(hop::run(work, s)),
        "start" => |work, s| Box::pin(start::run(work, s)),
        "registry" => |work, s| Box::pin(registry::run(work, s)),
        "recovery" => |work, s| Box::pin(recovery::run(work, s)),
        "footprint" => |work, s| Box::pin(footprint::run(work, s)),
        _ => return None,
    };
    Some(measure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_in_the_table_has_its_measurements() {
        for (group, _) in GROUPS {
            assert!(measurements(group).is_some(), "{group}");
        }
        assert!(measurements("nothing").is_none());
    }
}
