//! The benchmark harness in its smoke mode, so it cannot rot: every
//! measurement runs briefly against a real host and writes its JSON.

use crate::support::*;

#[test]
fn bench_smoke_runs_every_measurement() {
    let dir = temp_dir("bench");
    let json = dir.join("results.json");
    let mut command = std::process::Command::new(bin("bench"));
    command.arg("--smoke").arg("--json").arg(&json);
    let out = run(command);
    assert!(
        out.status.success(),
        "bench --smoke failed: {}",
        stderr(&out)
    );
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for expected in [
        "actor call p50 (c=1)",
        "actor call p50 (c=64)",
        "HTTP hello req/s (64 conns)",
        "actor->provider hop p50 (keyvalue get)",
        "actor start, warm (precompiled cache) p50",
        "provider start (archive to ready) p50",
        "host start (to ready) p50",
        "RSS host-core + launcher, idle",
    ] {
        assert!(names.contains(&expected), "missing {expected}: {names:?}");
    }
    for row in &rows {
        assert!(row["value"].as_f64().is_some_and(|v| v >= 0.0), "{row}");
    }
    assert!(stdout(&out).contains("| measurement |"));
}
