//! The rows: the printed table and the JSON that BENCHMARKS.md compares
//! across runs (names, units and goals stay as they are).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::args::Settings;

#[derive(Serialize, Clone)]
pub(crate) struct Row {
    name: String,
    value: f64,
    unit: String,
    baseline_name: String,
    baseline: f64,
    /// value / baseline
    ratio: f64,
    goal: String,
    met: Option<bool>,
}

pub(crate) fn row(
    name: &str,
    value: f64,
    unit: &str,
    baseline_name: &str,
    baseline: f64,
    goal: &str,
    met: Option<bool>,
) -> Row {
    Row {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline_name: baseline_name.into(),
        baseline,
        ratio: if baseline > 0.0 {
            value / baseline
        } else {
            f64::NAN
        },
        goal: goal.into(),
        met,
    }
}

pub(crate) fn print_table(rows: &[Row], s: &Settings) {
    println!("| measurement | value | baseline (same run) | ratio | goal |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        let goal = match r.met {
            Some(true) => format!("{} ✔", r.goal),
            Some(false) => format!("{} ✘", r.goal),
            None => r.goal.clone(),
        };
        // A baseline that could not run (no nats-server) has no ratio.
        let (baseline, ratio) = if r.ratio.is_finite() {
            (format!("{:.1}", r.baseline), format!("{:.3}x", r.ratio))
        } else {
            ("(not measured)".to_owned(), "-".to_owned())
        };
        println!(
            "| {} | {:.1} {} | {} {baseline} | {ratio} | {goal} |",
            r.name, r.value, r.unit, r.baseline_name
        );
    }
    if s.smoke {
        println!("\n(smoke run: figures are not meaningful)");
    }
}

pub(crate) fn write_json(rows: &[Row], out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(rows)?)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}
