//! The benchmark harness in its smoke mode, so it cannot rot: every
//! measurement runs briefly against a real host and writes its JSON.

use std::time::Duration;

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
        "raw echo p50 through a bare relay process (c=1)",
        "actor call p50 (c=1), against the relayed echo",
        "actor call p50 (c=64)",
        "HTTP hello req/s (64 conns)",
        "HTTP CPU per request, httpserver provider",
        "actor->provider hop p50 (keyvalue get), alone in a call",
        "actor->provider hop p50 (keyvalue get), 50 back to back",
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

#[test]
fn a_bench_killed_by_sigkill_leaves_no_host_behind() {
    let mut bench = std::process::Command::new(bin("bench"))
        .arg("--smoke")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = bench.id() as i32;
    // A running host (`host-core run`), not one of its short CLI calls.
    let is_host = |p: &i32| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"host-core"))
                && args.get(1) == Some(&&b"run"[..])
        })
    };
    let started = eventually(Duration::from_secs(30), || {
        descendants(pid).iter().any(is_host)
    });
    let tree = descendants(pid);
    let _ = bench.kill();
    let _ = bench.wait();
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("wasmhost-bench-{pid}")));
    assert!(started, "the bench started no host");
    for p in tree {
        assert!(
            eventually(Duration::from_secs(10), || !process_alive(p)),
            "process {p} outlived the killed bench"
        );
    }
}

/// A typo must not start a run of several minutes; asking for help is no error.
#[test]
fn bench_refuses_an_unknown_argument_before_measuring() {
    let mut command = std::process::Command::new(bin("bench"));
    command.arg("--help");
    let out = run(command);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("usage: bench"), "{}", stdout(&out));

    let mut command = std::process::Command::new(bin("bench"));
    command.arg("--smok");
    let started = std::time::Instant::now();
    let out = run(command);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown argument \"--smok\""),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The NATS baseline's server picks its own port and the bench reads it
/// back; a server that cannot start leaves its rows unmeasured, with why.
#[test]
fn the_nats_baseline_is_measured_or_says_why_not() {
    use std::os::unix::fs::PermissionsExt;
    const HOP: &str = "actor->provider hop p50 (keyvalue get), alone in a call";
    let dir = temp_dir("bench-nats");
    let hop_row = |json: &std::path::Path| -> serde_json::Value {
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        rows.into_iter()
            .find(|r| r["name"] == HOP)
            .unwrap_or_else(|| panic!("no row {HOP}"))
    };

    // A nats-server that exits at once, found first on PATH.
    let fake = dir.join("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake.join("nats-server");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let json = dir.join("without.json");
    let mut command = std::process::Command::new(bin("bench"));
    command
        .args(["--smoke", "--only", "hop", "--json"])
        .arg(&json)
        .env("PATH", &path);
    let out = run(command);
    assert!(out.status.success(), "{}", stderr(&out));
    let why = "nats-server exited (exit status: 3) before it listened";
    assert!(stderr(&out).contains(why), "{}", stderr(&out));
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains(HOP))
        .map(str::to_owned)
        .unwrap();
    assert!(line.contains("(not measured) | - |"), "{line}");
    assert!(hop_row(&json)["ratio"].is_null());

    // The real server, where it is installed (`cargo xtask bench` installs it).
    let installed = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        let json = dir.join("with.json");
        let mut command = std::process::Command::new(bin("bench"));
        command
            .args(["--smoke", "--only", "hop", "--json"])
            .arg(&json);
        let out = run(command);
        assert!(out.status.success(), "{}", stderr(&out));
        let row = hop_row(&json);
        assert!(row["baseline"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ratio"].as_f64().is_some(), "{row}");
    }
}
