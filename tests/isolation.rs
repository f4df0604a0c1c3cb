//! Provider isolation end to end (ARCHITECTURE.md, "Provider isolation"): a
//! hostile provider, the fixture provider's test-only `attacks`, tries what
//! issue 15 lists against a real host; and a replaced provider binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

const KV: &str = "wasmcloud:keyvalue";

/// The first file below `dir`, depth first.
fn some_file(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_file() {
            return Some(path);
        }
        if let Some(found) = path.is_dir().then(|| some_file(&path)).flatten() {
            return Some(found);
        }
    }
    None
}

fn process_pid(host: &TestHost, name: &str) -> i64 {
    host.inventory()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["pid"].as_i64())
        .unwrap_or_else(|| panic!("no pid for {name}"))
}

/// The provider binary the host extracted for archive entry `name`.
fn cached_binary(host: &TestHost, name: &str) -> PathBuf {
    let providers = host.state_dir().join("cache/providers");
    std::fs::read_dir(&providers)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no cached binary {name} in {}", providers.display()))
}

#[test]
fn a_provider_reaches_nothing_of_the_host_but_its_own_data() {
    let host = TestHost::start();
    // Something in the compile cache, and another provider with data.
    host.start_actor("echo.wasm", "echo", &[]);
    let compiled = some_file(&host.state_dir().join("cache/compiled"))
        .expect("the worker cached a compiled actor");
    let (victim_par, victim) = host.par("victim", KV);
    host.ctl_ok(&["start-provider", victim_par.to_str().unwrap()]);
    let victim_data = host.state_dir().join("data").join(&victim).join("default");
    std::fs::write(victim_data.join("secret"), "theirs").unwrap();
    let victim_binary = cached_binary(&host, "victim");

    let (par, attacker) = host.par("attacker", KV);
    let own = host
        .state_dir()
        .join("data")
        .join(&attacker)
        .join("default");
    let tmp = std::env::temp_dir().join(format!("wh-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let s = |p: &Path| p.display().to_string();
    let attacks = [
        ("own-write", "write", s(&own.join("mine"))),
        ("own-read", "read", s(&own.join("mine"))),
        ("tmp-write", "write", s(&tmp)),
        ("compiled-read", "read", s(&compiled)),
        ("compiled-write", "write", s(&compiled)),
        (
            "compiled-plant",
            "write",
            s(&compiled.with_file_name("planted")),
        ),
        ("binary-read", "read", s(&victim_binary)),
        ("binary-replace", "write", s(&victim_binary)),
        ("other-data-read", "read", s(&victim_data.join("secret"))),
        ("other-data-write", "write", s(&victim_data.join("planted"))),
        ("state-list", "list", s(&host.state_dir())),
        ("control", "control", s(&host.state_dir().join("host.sock"))),
        ("signal-host", "signal", host.pid().to_string()),
        (
            "signal-worker",
            "signal",
            process_pid(&host, "actor-runtime").to_string(),
        ),
        (
            "signal-launcher",
            "signal",
            process_pid(&host, "provider-launcher").to_string(),
        ),
        ("ptrace-host", "ptrace", host.pid().to_string()),
        (
            "ptrace-worker",
            "ptrace",
            process_pid(&host, "actor-runtime").to_string(),
        ),
        (
            "ptrace-launcher",
            "ptrace",
            process_pid(&host, "provider-launcher").to_string(),
        ),
        ("environ-host", "environ", host.pid().to_string()),
    ];
    let config = serde_json::json!({
        "attacks": attacks
            .iter()
            .map(|(name, kind, target)| serde_json::json!({"name": name, "kind": kind, "target": target}))
            .collect::<Vec<_>>(),
    });
    host.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--config",
        &config.to_string(),
    ]);
    let report = own.join("attacks.json");
    assert!(
        eventually(Duration::from_secs(10), || report.exists()),
        "no report; log:\n{}",
        host.log()
    );
    let outcomes: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let allowed = ["own-write", "own-read"];
    for (name, _, target) in &attacks {
        let outcome = &outcomes[*name];
        if allowed.contains(name) {
            assert_eq!(outcome, "ok", "{name} on {target}");
        } else {
            assert!(
                outcome.starts_with("denied"),
                "{name} on {target} was allowed: {outcomes:#?}"
            );
        }
    }
    // Nothing was changed or planted, and everything still runs.
    assert!(!tmp.exists());
    assert!(!compiled.with_file_name("planted").exists());
    assert!(!victim_data.join("planted").exists());
    assert_eq!(
        std::fs::read_to_string(victim_data.join("secret")).unwrap(),
        "theirs"
    );
    assert!(host.log().contains("refused a control connection: pid"));
    assert_eq!(
        host.provider(&victim, "default").unwrap()["state"],
        "running"
    );
    host.ctl_ok(&["inventory"]);
}

#[test]
fn a_restart_runs_the_verified_binary_not_a_replaced_one() {
    let host = TestHost::start();
    let (par, key) = host.par("fixture", KV);
    host.ctl_ok(&["start-provider", par.to_str().unwrap()]);
    let first = host.provider(&key, "default").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    let binary = cached_binary(&host, "fixture");
    // What runs is the sealed in-memory copy; `ps` still shows the path.
    let exe = std::fs::read_link(format!("/proc/{first}/exe")).unwrap();
    assert!(exe.to_string_lossy().starts_with("/memfd:"), "{exe:?}");
    let cmdline = std::fs::read(format!("/proc/{first}/cmdline")).unwrap();
    assert_eq!(
        cmdline.split(|&b| b == 0).next().unwrap(),
        binary.as_os_str().as_encoded_bytes()
    );

    // Someone replaces the cached binary, then the provider crashes.
    let marker = host.dir.join("replaced-binary-ran");
    let fake = host.dir.join("fake");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\ntouch {}\nexec sleep 1000\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&fake, &binary).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = eventually(Duration::from_secs(10), || {
        host.provider(&key, "default").is_some_and(|p| {
            p["state"] == "running" && p["restarts"] == 1 && p["pid"].as_i64() != Some(first as i64)
        })
    });
    assert!(
        restarted,
        "{:?}\nlog:\n{}",
        host.provider(&key, "default"),
        host.log()
    );
    assert!(!marker.exists(), "the replaced binary ran");
    let second = host.provider(&key, "default").unwrap()["pid"]
        .as_i64()
        .unwrap();
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert!(exe.to_string_lossy().starts_with("/memfd:"), "{exe:?}");
}
