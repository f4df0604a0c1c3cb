//! Capability providers end to end: archives, the launcher, the shim, links
//! and routing, with the fixture provider built by the workspace.

use std::time::Duration;

use crate::support::*;

const KV: &str = "wasmcloud:keyvalue";

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// msgpack-named `{actor, operation, payload}` for the fixture's Echo.CallBack.
fn forward(target: &str, operation: &str, payload: serde_json::Value) -> String {
    serde_json::json!({"target": target, "operation": operation, "payload": payload}).to_string()
}

#[test]
fn par_create_and_inspect() {
    let host = TestHost::start();
    let (par, key) = host.par("fixture", KV);
    assert!(key.starts_with('V') && key.len() == 56);
    let info = json(&host_core_ok(
        &host.keys,
        &["par", "inspect", par.to_str().unwrap(), "--json"],
    ));
    assert_eq!(info["key"], key.as_str());
    assert_eq!(info["capid"], KV);
    assert_eq!(info["vendor"], "tests");
    assert_eq!(info["valid"], true);
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    assert_eq!(info["targets"], serde_json::json!([target]));
    let text = host_core_ok(&host.keys, &["par", "inspect", par.to_str().unwrap()]);
    assert!(text.contains(KV) && text.contains("valid"), "{text}");
}

/// `par inspect` prints what the archive holds and fails, with a
/// one-line reason, when its claims are invalid (here: a forged signature).
#[test]
fn par_inspect_fails_for_invalid_claims() {
    let dir = temp_dir("par-invalid");
    let par = dir.join("p.par");
    let target = format!(
        "{}-{}={}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        fixture("echo.wasm").display()
    );
    host_core_ok(
        &dir,
        &[
            "par",
            "create",
            "--name",
            "p",
            "--vendor",
            "tests",
            "--capid",
            KV,
            "--target",
            &target,
            "-o",
            par.to_str().unwrap(),
        ],
    );
    // Unpack, forge the claims' signature, pack again.
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&par).unwrap()),
        &mut unpacked,
    )
    .unwrap();
    crate::forge_signature(&mut unpacked);
    std::fs::write(&par, &unpacked).unwrap();

    let out = host_core(&dir, &["par", "inspect", par.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains("INVALID") && text.contains(KV), "{text}");
    let err = stderr(&out);
    assert!(err.contains("signature is invalid"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = host_core(&dir, &["par", "inspect", par.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let info = json(&stdout(&out));
    assert_eq!(info["valid"], false);
    assert!(info["problem"].as_str().unwrap().contains("signature"));
}

#[test]
fn actor_to_provider_and_back_with_links() {
    let host = TestHost::start();
    let hello = host.start_actor(
        "hello.wasm",
        "hello",
        &["--cap", "wasmcloud:httpserver", "--cap", KV],
    );
    let echo = host.start_actor("echo.wasm", "echo", &["--cap", KV]);
    let component = host.start_actor("echo_component.wasm", "component", &["--cap", KV]);
    let (par, provider) = host.par("fixture", KV);
    let started = host.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--config",
        r#"{"mode":"echo"}"#,
    ]);
    assert_eq!(started, provider);
    let summary = host
        .provider(&provider, "default")
        .expect("provider in inventory");
    assert_eq!(summary["state"], "running");
    assert_eq!(summary["contract_id"], KV);
    assert!(summary["pid"].as_i64().unwrap() > 0);

    // No link yet: a clear error naming the cause.
    let err = host.ctl_err(&[
        "call",
        &hello,
        "HttpServer.HandleRequest",
        &http_request("/kv", ""),
    ]);
    assert!(err.contains("no link"), "{err}");

    host.ctl_ok(&["link", "put", &hello, &provider, KV, "bucket=one"]);
    host.ctl_ok(&["link", "put", &component, &provider, KV]);
    let reply = json(&host.ctl_ok(&[
        "call",
        &hello,
        "HttpServer.HandleRequest",
        &http_request("/kv", ""),
    ]));
    assert_eq!(reply["body"], "fixture", "{reply}");

    // The provider saw both links, with values.
    let links = json(&host.ctl_ok(&[
        "call",
        &component,
        "Forward",
        &forward(KV, "Echo.Links", serde_json::json!([])),
    ]));
    let text = links.to_string();
    assert!(
        text.contains(&hello) && text.contains(&component) && text.contains("one"),
        "{text}"
    );
    let listed = json(&host.ctl_ok(&["link", "ls", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // Provider to actor: the component asks the provider to call the echo actor.
    let args =
        serde_json::json!({"actor": echo, "operation": "Echo.Echo", "payload": [0x93, 1, 2, 3]});
    let args_msgpack: Vec<u8> = rmp_serde::to_vec_named(&args).unwrap();
    let via = host.ctl_ok(&[
        "call",
        &component,
        "Forward",
        &forward(KV, "Echo.CallBack", serde_json::json!(args_msgpack)),
    ]);
    assert_eq!(via, "[1,2,3]");

    // A provider error is the actor's error, named.
    let err = host.ctl_err(&[
        "call",
        &component,
        "Forward",
        &forward(KV, "Echo.Fail", serde_json::json!([])),
    ]);
    assert!(err.contains("fixture provider failure"), "{err}");

    // Link deleted: the provider forgets it, and the actor's call is refused.
    host.ctl_ok(&["link", "del", &hello, KV]);
    let links = host.ctl_ok(&[
        "call",
        &component,
        "Forward",
        &forward(KV, "Echo.Links", serde_json::json!([])),
    ]);
    assert!(!links.contains(&hello), "{links}");
    let err = host.ctl_err(&[
        "call",
        &hello,
        "HttpServer.HandleRequest",
        &http_request("/kv", ""),
    ]);
    assert!(err.contains("no link"), "{err}");
    let err = host.ctl_err(&["link", "del", &hello, KV]);
    assert!(err.contains("no link"), "{err}");

    // Provider gone: calls fail with the cause, the link stays.
    host.ctl_ok(&["stop-provider", &provider]);
    let err = host.ctl_err(&[
        "call",
        &component,
        "Forward",
        &forward(KV, "Echo.Links", serde_json::json!([])),
    ]);
    assert!(err.contains("not running"), "{err}");
    assert_eq!(
        json(&host.ctl_ok(&["link", "ls", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn archive_refusals_launch_nothing() {
    let host = TestHost::start();
    let launcher = |h: &TestHost| {
        h.inventory()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "provider-launcher")
            .and_then(|p| p["pid"].as_i64())
            .unwrap() as i32
    };
    let refuse = |path: &std::path::Path, why: &str| {
        let err = host.ctl_err(&["start-provider", path.to_str().unwrap()]);
        assert!(err.contains(why), "expected `{why}` in: {err}");
        assert!(host.inventory()["providers"].as_array().unwrap().is_empty());
        assert!(
            descendants(launcher(&host)).is_empty(),
            "something was launched"
        );
    };
    let garbage = host.dir.join("garbage.par");
    std::fs::write(&garbage, vec![7u8; 2048]).unwrap();
    refuse(&garbage, "not a provider archive");

    // A binary for another target only.
    let other = host.dir.join("other.par");
    host_core_ok(
        &host.keys,
        &[
            "par",
            "create",
            "--name",
            "other",
            "--vendor",
            "t",
            "--capid",
            KV,
            "--target",
            &format!("sparc-plan9={}", bin("fixture-provider").display()),
            "-o",
            other.to_str().unwrap(),
        ],
    );
    refuse(&other, "no binary for this host's target");

    // Tampered binary, and claims whose signature does not verify.
    let (par, _) = host.par("fixture", KV);
    let (jwt, binaries) = unpack(&par);
    let mut changed = binaries.clone();
    changed[0].1.push(0);
    let tampered = host.dir.join("tampered.par");
    pack(&tampered, &jwt, &changed);
    refuse(&tampered, "does not match the hash in the claims");

    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let (other_jwt, _) = unpack(&host.par("another", KV).0);
    parts[2] = other_jwt.split('.').nth(2).unwrap().to_owned();
    let forged = host.dir.join("forged.par");
    pack(&forged, &parts.join("."), &binaries);
    refuse(&forged, "signature is invalid");

    let missing = host.dir.join("missing.par");
    let err = host.ctl_err(&["start-provider", missing.to_str().unwrap()]);
    assert!(err.contains("cannot find"), "{err}");
}

fn unpack(par: &std::path::Path) -> (String, Vec<(String, Vec<u8>)>) {
    use std::io::Read;
    let file = std::fs::File::open(par).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut jwt = String::new();
    let mut binaries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path == "claims.jwt" {
            jwt = String::from_utf8(data).unwrap();
        } else {
            binaries.push((path, data));
        }
    }
    (jwt, binaries)
}

fn pack(out: &std::path::Path, jwt: &str, binaries: &[(String, Vec<u8>)]) {
    let file = std::fs::File::create(out).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    add("claims.jwt", jwt.as_bytes());
    for (name, data) in binaries {
        add(name, data);
    }
    builder.into_inner().unwrap().finish().unwrap();
}

fn provider_tree(host: &TestHost, key: &str, link: &str) -> Vec<i32> {
    let pid = host.provider(key, link).unwrap()["pid"].as_i64().unwrap() as i32;
    let mut all = vec![pid];
    all.extend(descendants(pid));
    all
}

#[test]
fn stop_provider_leaves_no_process_even_when_it_forks_and_ignores_sigterm() {
    let host = TestHost::start();
    let (par, key) = host.par("fixture", KV);
    let config = r#"{"fork_grandchild":true,"ignore_sigterm":true,"escape_group":true}"#;
    host.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--link-name",
        "evil",
        "--config",
        config,
    ]);
    assert!(eventually(Duration::from_secs(5), || provider_tree(
        &host, &key, "evil"
    )
    .len()
        >= 3));
    let tree = provider_tree(&host, &key, "evil");
    // The escaped grandchild is no longer below the provider: find it under the launcher.
    let launcher = host.inventory()["processes"][1]["pid"].as_i64().unwrap() as i32;
    let mut everything: Vec<i32> = descendants(launcher);
    everything.extend(tree);
    host.ctl_ok(&["stop-provider", &key, "--link-name", "evil"]);
    assert!(
        eventually(Duration::from_secs(5), || everything
            .iter()
            .all(|p| !process_alive(*p))),
        "left behind: {:?}",
        everything
            .iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
    assert!(host.provider(&key, "evil").is_none());
}

#[test]
fn stop_host_and_kill_9_leave_no_process() {
    for hard in [false, true] {
        let mut host = TestHost::start();
        let (par, _) = host.par("fixture", KV);
        let config = r#"{"fork_grandchild":true,"ignore_sigterm":true,"escape_group":true}"#;
        host.ctl_ok(&["start-provider", par.to_str().unwrap(), "--config", config]);
        host.ctl_ok(&[
            "start-provider",
            par.to_str().unwrap(),
            "--link-name",
            "plain",
        ]);
        let root = host.pid() as i32;
        assert!(eventually(Duration::from_secs(5), || descendants(root)
            .len()
            >= 6));
        let everything = descendants(root);
        if hard {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(root),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            host.wait_exit(Duration::from_secs(5));
        } else {
            host.ctl_ok(&["stop-host"]);
            assert!(host.wait_exit(Duration::from_secs(15)).success());
        }
        assert!(
            eventually(Duration::from_secs(2), || everything
                .iter()
                .all(|p| !process_alive(*p))),
            "hard={hard}: left behind {:?}",
            everything
                .iter()
                .filter(|p| process_alive(**p))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn only_the_launched_provider_can_complete_the_handshake() {
    let host = TestHost::start();
    let socket = host.state_dir().join("provider.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    use std::io::{Read, Write};
    let hello = rmp_serde::to_vec_named(&wire::handshake::Hello {
        version: wire::PROTOCOL_VERSION,
        role: wire::handshake::Role::Provider,
        token: "guessed".into(),
        key: String::new(),
    })
    .unwrap();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&hello);
    stream.write_all(&frame).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let welcome: wire::handshake::Welcome = rmp_serde::from_slice(&answer[4..]).unwrap();
    assert!(
        matches!(welcome, wire::handshake::Welcome::Refused { ref reason } if reason.contains("token")),
        "{welcome:?}"
    );
    host.ctl_ok(&["inventory"]);
}

#[test]
fn crashed_provider_is_restarted_with_its_links() {
    let host = TestHost::start();
    let component = host.start_actor("echo_component.wasm", "component", &["--cap", KV]);
    let (par, key) = host.par("fixture", KV);
    host.ctl_ok(&["start-provider", par.to_str().unwrap()]);
    host.ctl_ok(&["link", "put", &component, &key, KV, "x=1"]);
    let pid = host.provider(&key, "default").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        host.provider(&key, "default")
            .is_some_and(|p| p["state"] == "running" && p["pid"].as_i64() != Some(pid as i64))
    }));
    assert_eq!(host.provider(&key, "default").unwrap()["restarts"], 1);
    let links = host.ctl_ok(&[
        "call",
        &component,
        "Forward",
        &forward(KV, "Echo.Links", serde_json::json!([])),
    ]);
    assert!(
        links.contains(&component),
        "links not delivered again: {links}"
    );
}
