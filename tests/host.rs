//! End-to-end tests of the host core: real `host-core` and `actor-runtime`
//! processes, signed fixture actors, the CLI as a user runs it.

#[path = "bench_smoke.rs"]
mod bench_smoke;
#[path = "demo.rs"]
mod demo;
#[path = "hardening.rs"]
mod hardening;
#[path = "isolation.rs"]
mod isolation;
#[path = "lattice.rs"]
mod lattice;
#[path = "oci.rs"]
mod oci;
#[path = "providers.rs"]
mod providers;
#[path = "resilience.rs"]
mod resilience;
mod support;

use std::{
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    time::{Duration, Instant},
};

use support::*;

#[test]
fn keys_gen_prints_keys_of_each_kind() {
    let dir = temp_dir("keys");
    for (kind, prefix) in [
        ("account", 'A'),
        ("module", 'M'),
        ("service", 'V'),
        ("server", 'N'),
    ] {
        let out = host_core_ok(&dir, &["keys", "gen", kind]);
        let public = out
            .lines()
            .find_map(|l| l.strip_prefix("Public Key: "))
            .unwrap();
        let seed = out.lines().find_map(|l| l.strip_prefix("Seed: ")).unwrap();
        assert_eq!(public.len(), 56);
        assert!(public.starts_with(prefix), "{kind}: {public}");
        assert!(seed.starts_with('S'));
    }
    assert!(!host_core(&dir, &["keys", "gen", "bogus"]).status.success());
}

#[test]
fn claims_sign_and_inspect() {
    let dir = temp_dir("claims");
    let out = dir.join("echo.wasm");
    let key = host_core_ok(
        &dir,
        &[
            "claims",
            "sign",
            fixture("echo.wasm").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--name",
            "echo",
            "--cap",
            "wasmcloud:keyvalue",
            "--cap",
            "wasmcloud:builtin:numbergen",
            "--call-alias",
            "echoer",
            "--rev",
            "3",
            "--ver",
            "0.3.0",
            "--expires-in-days",
            "10",
        ],
    );
    assert!(key.starts_with('M') && key.len() == 56);
    // Keys were created on first use and are kept owner-only.
    let account = dir.join("default_account.nk");
    assert!(account.exists());
    assert_eq!(
        std::fs::metadata(&account).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let json: serde_json::Value = serde_json::from_str(&host_core_ok(
        &dir,
        &["claims", "inspect", out.to_str().unwrap(), "--json"],
    ))
    .unwrap();
    assert_eq!(json["key"], key.as_str());
    assert_eq!(json["name"], "echo");
    assert_eq!(json["rev"], 3);
    assert_eq!(json["ver"], "0.3.0");
    assert_eq!(json["call_alias"], "echoer");
    assert_eq!(json["kind"], "module");
    assert_eq!(
        json["caps"],
        serde_json::json!(["wasmcloud:keyvalue", "wasmcloud:builtin:numbergen"])
    );
    assert_eq!(json["validation"]["signature_valid"], true);
    assert_eq!(json["validation"]["hash_valid"], true);

    let text = host_core_ok(&dir, &["claims", "inspect", out.to_str().unwrap()]);
    assert!(
        text.contains(&key) && text.contains("wasmcloud:keyvalue"),
        "{text}"
    );

    // Signing again with the same name reuses the module key.
    let again = host_core_ok(
        &dir,
        &[
            "claims",
            "sign",
            fixture("echo.wasm").to_str().unwrap(),
            "-o",
            dir.join("echo2.wasm").to_str().unwrap(),
            "--name",
            "echo",
        ],
    );
    assert_eq!(again, key);

    let unsigned = host_core(
        &dir,
        &["claims", "inspect", fixture("echo.wasm").to_str().unwrap()],
    );
    assert!(!unsigned.status.success());
    assert!(stderr(&unsigned).contains("unsigned"));
}

/// Replaces one character in the middle of the signature (the JWT's last
/// segment) embedded in `bytes`: same length, so the file's structure
/// holds, but the signature no longer verifies.
pub(crate) fn forge_signature(bytes: &mut [u8]) {
    // A JWT header starts `eyJ`; its third segment follows the second dot.
    let start = bytes
        .windows(3)
        .position(|w| w == b"eyJ")
        .expect("a JWT in the file");
    let mut dots = 0;
    let mut at = start;
    while dots < 2 {
        if bytes[at] == b'.' {
            dots += 1;
        }
        at += 1;
    }
    let middle = at + 20;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
}

/// `claims inspect` still prints its report, and fails with a one-line
/// reason, for claims that are not valid: a module changed after signing,
/// a forged signature, expired or not yet valid claims; `--json` too.
#[test]
fn claims_inspect_fails_for_invalid_claims() {
    let dir = temp_dir("claims-invalid");
    let echo = fixture("echo.wasm");
    let sign = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = vec![
            "claims",
            "sign",
            echo.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--name",
            "echo",
        ];
        args.extend_from_slice(extra);
        host_core_ok(&dir, &args);
        out
    };
    let tampered = sign("tampered.wasm", &[]);
    let mut bytes = std::fs::read(&tampered).unwrap();
    let export = bytes
        .windows(6)
        .position(|w| w == b"memory")
        .expect("an export named memory");
    bytes[export + 5] = b'z';
    std::fs::write(&tampered, &bytes).unwrap();

    let forged = sign("forged.wasm", &[]);
    let mut bytes = std::fs::read(&forged).unwrap();
    forge_signature(&mut bytes);
    std::fs::write(&forged, &bytes).unwrap();

    let expired = sign("expired.wasm", &["--expires-in-days", "0"]);
    let later = sign("later.wasm", &["--not-before-days", "1"]);
    std::thread::sleep(Duration::from_millis(1100));

    for (file, shown, reason) in [
        (&tampered, "DOES NOT MATCH", "hash does not match"),
        (&forged, "INVALID", "signature is invalid"),
        (&expired, "Expires", "claims expired"),
        (&later, "Valid from", "not valid yet"),
    ] {
        let out = host_core(&dir, &["claims", "inspect", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", file.display());
        assert!(stdout(&out).contains(shown), "{}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains(reason), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");

        let out = host_core(
            &dir,
            &["claims", "inspect", file.to_str().unwrap(), "--json"],
        );
        assert!(!out.status.success(), "{}", file.display());
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["name"], "echo");
        assert!(stderr(&out).contains(reason));
    }
    let json: serde_json::Value = serde_json::from_str(&stdout(&host_core(
        &dir,
        &["claims", "inspect", tampered.to_str().unwrap(), "--json"],
    )))
    .unwrap();
    assert_eq!(json["validation"]["hash_valid"], false);
    assert_eq!(json["validation"]["signature_valid"], true);
}

#[test]
fn module_actor_lifecycle_through_the_cli() {
    let host = TestHost::start();
    let key = host.start_actor("echo.wasm", "echo", &["--call-alias", "echoer"]);

    let reply = host.ctl_ok(&["call", &key, "Echo.Echo", r#"{"greeting":"hi","n":7}"#]);
    let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(value, serde_json::json!({"greeting": "hi", "n": 7}));
    // By call alias, too.
    assert!(host
        .ctl_ok(&["call", "echoer", "Echo.Echo", "[1,2]"])
        .contains('1'));

    let inventory = host.inventory();
    let actor = &inventory["actors"][0];
    assert_eq!(actor["key"], key.as_str());
    assert_eq!(actor["name"], "echo");
    assert_eq!(actor["count"], 1);
    assert_eq!(actor["kind"], "module");
    assert!(inventory["host_id"].as_str().unwrap().starts_with('N'));
    let text = host.ctl_ok(&["inventory"]);
    assert!(
        text.contains(&key) && text.contains("actor-runtime"),
        "{text}"
    );

    host.ctl_ok(&["scale-actor", &key, "4"]);
    assert_eq!(host.inventory()["actors"][0]["count"], 4);

    let err = host.ctl_err(&[
        "start-actor",
        host.sign("echo.wasm", "echo", &[]).0.to_str().unwrap(),
    ]);
    assert!(err.contains("already running"), "{err}");

    host.ctl_ok(&["scale-actor", &key, "0"]);
    assert!(host.inventory()["actors"].as_array().unwrap().is_empty());
    let err = host.ctl_err(&["call", &key, "Echo.Echo"]);
    assert!(err.contains("no actor"), "{err}");

    let key = host.start_actor("echo.wasm", "echo", &[]);
    host.ctl_ok(&["stop-actor", &key]);
    let err = host.ctl_err(&["stop-actor", &key]);
    assert!(err.contains("no actor"), "{err}");
}

#[test]
fn wasmbus_rpc_actor_runs_unchanged() {
    let host = TestHost::start();
    let hello = host.start_actor(
        "hello.wasm",
        "hello",
        &[
            "--cap",
            "wasmcloud:httpserver",
            "--cap",
            "wasmcloud:builtin:numbergen",
            "--cap",
            "wasmcloud:builtin:logging",
        ],
    );
    let call = |path: &str, query: &str| -> serde_json::Value {
        serde_json::from_str(&host.ctl_ok(&[
            "call",
            &hello,
            "HttpServer.HandleRequest",
            &http_request(path, query),
        ]))
        .unwrap()
    };
    let response = call("/", "");
    assert_eq!(response["statusCode"], 200);
    assert_eq!(response["body"], "Hello World");
    assert_eq!(call("/", "name=Ada")["body"], "Hello Ada");

    // Builtins need no provider.
    let guid = call("/guid", "");
    assert_eq!(guid["body"].as_str().unwrap().len(), 36, "{guid}");
    assert_eq!(call("/log", "")["body"], "logged");
    assert_eq!(call("/nowhere", "")["statusCode"], 404);

    // Actor to actor, by call alias and by key.
    let other = host.start_actor(
        "hello.wasm",
        "hello-two",
        &["--call-alias", "second", "--cap", "wasmcloud:httpserver"],
    );
    assert_eq!(
        call("/call/second", "name=Bo")["body"],
        "via second: Hello Bo"
    );
    let by_key = call(&format!("/call/{other}"), "");
    assert_eq!(by_key["body"], format!("via {other}: Hello World"));

    // A contract outside the actor's caps is refused with its name.
    let err = host.ctl_err(&[
        "call",
        &hello,
        "HttpServer.HandleRequest",
        &http_request("/kv", ""),
    ]);
    assert!(err.contains("wasmcloud:keyvalue"), "{err}");
}

#[test]
fn component_actor_runs_and_calls_out() {
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "echo", &["--call-alias", "echoer"]);
    let component = host.start_actor(
        "echo_component.wasm",
        "component",
        &[
            "--cap",
            "wasmcloud:builtin:numbergen",
            "--cap",
            "wasmcloud:keyvalue",
        ],
    );
    assert_eq!(
        host.inventory()["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == component.as_str())
            .unwrap()["kind"],
        "component"
    );

    let reply = host.ctl_ok(&["call", &component, "Echo", r#"{"x":[1,2,3]}"#]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reply).unwrap(),
        serde_json::json!({"x": [1, 2, 3]})
    );
    let guid = host.ctl_ok(&["call", &component, "Guid"]);
    assert_eq!(guid.trim_matches('"').len(), 36, "{guid}");

    // Component to module actor.
    let forwarded = host.ctl_ok(&[
        "call",
        &component,
        "Forward",
        &serde_json::json!({"target": "echoer", "operation": "Echo.Echo", "payload": [0x93, 1, 2, 3]})
            .to_string(),
    ]);
    assert_eq!(forwarded, "[1,2,3]");
    let _ = echo;

    // In caps but nothing linked yet: a clear error, not a hang.
    let err = host.ctl_err(&["call", &component, "Kv"]);
    assert!(err.contains("wasmcloud:keyvalue"), "{err}");

    // A component without the numbergen cap is refused by contract name.
    let bare = host.start_actor("echo_component.wasm", "bare-component", &[]);
    let err = host.ctl_err(&["call", &bare, "Guid"]);
    assert!(err.contains("wasmcloud:builtin:numbergen"), "{err}");
    let err = host.ctl_err(&["call", &bare, "Trap"]);
    assert!(!err.is_empty());
    assert!(host.ctl_ok(&["call", &bare, "Echo", "1"]) == "1");
}

#[test]
fn claims_refusals_each_say_why_and_start_nothing() {
    let host = TestHost::start();
    let refuse = |path: &str, why: &str| {
        let err = host.ctl_err(&["start-actor", path]);
        assert!(err.contains(why), "expected `{why}` in: {err}");
        assert!(
            host.inventory()["actors"].as_array().unwrap().is_empty(),
            "a refused actor was started"
        );
    };
    refuse(fixture("echo.wasm").to_str().unwrap(), "unsigned");

    let (signed, _) = host.sign("echo.wasm", "echo", &[]);
    let mut bytes = std::fs::read(&signed).unwrap();
    // One changed byte in the code (the wasm header is followed by sections
    // we did not sign over differently: any byte before the claims works).
    let pos = bytes.len() / 8;
    bytes[pos.max(12)] ^= 0x01;
    let tampered = host.dir.join("tampered.wasm");
    std::fs::write(&tampered, bytes).unwrap();
    let err = host.ctl_err(&["start-actor", tampered.to_str().unwrap()]);
    assert!(
        err.contains("changed after it was signed") || err.contains("not a WebAssembly"),
        "{err}"
    );

    let (expired, _) = host.sign("echo.wasm", "expired", &["--expires-in-days", "0"]);
    std::thread::sleep(Duration::from_millis(1100));
    refuse(expired.to_str().unwrap(), "expired");

    let (later, _) = host.sign("echo.wasm", "later", &["--not-before-days", "1"]);
    refuse(later.to_str().unwrap(), "not valid yet");

    let garbage = host.dir.join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    refuse(garbage.to_str().unwrap(), "not a WebAssembly");

    // Valid claims over invalid wasm: the worker refuses it, nothing starts.
    let bad_code = host.dir.join("bad-code.wasm");
    std::fs::write(&bad_code, b"\0asm\x01\0\0\0\x01\x05\xff\xff\xff\xff\xff").unwrap();
    let signed_bad = host.dir.join("bad-code.signed.wasm");
    let signed = host_core(
        &host.keys,
        &[
            "claims",
            "sign",
            bad_code.to_str().unwrap(),
            "-o",
            signed_bad.to_str().unwrap(),
            "--name",
            "bad",
        ],
    );
    if signed.status.success() {
        refuse(signed_bad.to_str().unwrap(), "could not start");
    }
}

#[test]
fn allowed_issuers_are_enforced() {
    let dir = temp_dir("issuer");
    let out = host_core_ok(&dir, &["keys", "gen", "account"]);
    let stranger = out
        .lines()
        .find_map(|l| l.strip_prefix("Public Key: "))
        .unwrap()
        .to_string();
    let host = TestHost::start_with(&["--allowed-issuer", &stranger]);
    let (signed, _) = host.sign("echo.wasm", "echo", &[]);
    // Provider archives too.
    let (par, _) = host.par("fixture", "wasmcloud:keyvalue");
    let err = host.ctl_err(&["start-provider", par.to_str().unwrap()]);
    assert!(
        err.contains("not on this host's list of allowed issuers"),
        "{err}"
    );
    let err = host.ctl_err(&["start-actor", signed.to_str().unwrap()]);
    assert!(
        err.contains("not on this host's list of allowed issuers"),
        "{err}"
    );

    // Signed by the allowed account: accepted.
    let seed = out.lines().find_map(|l| l.strip_prefix("Seed: ")).unwrap();
    let seed_file = host.dir.join("stranger.nk");
    std::fs::write(&seed_file, seed).unwrap();
    let (ok, _) = host.sign(
        "echo.wasm",
        "echo-ok",
        &["--issuer", seed_file.to_str().unwrap()],
    );
    host.ctl_ok(&["start-actor", ok.to_str().unwrap()]);
}

#[test]
fn trap_loop_and_memory_blowup_are_contained() {
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    for (fixture, name, why) in [
        ("trap.wasm", "trap", "unreachable"),
        ("loop.wasm", "loop", "deadline"),
        ("memory_hog.wasm", "hog", ""),
    ] {
        let key = host.start_actor(fixture, name, &[]);
        let started = Instant::now();
        let err = host.ctl_err(&["call", &key, "Any.Thing"]);
        assert!(err.contains(why), "{name}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        // The worker and other actors go on serving; so does the bad actor.
        assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "5"]), "5");
        let again = host.ctl_err(&["call", &key, "Any.Thing"]);
        assert!(again.contains(why), "{name} second call: {again}");
    }
    assert_eq!(host.inventory()["processes"][0]["restarts"], 0);
}

#[test]
fn update_actor_loses_no_call() {
    let host = TestHost::start();
    let seed_out = host_core_ok(&host.keys, &["keys", "gen", "module"]);
    let seed = seed_out
        .lines()
        .find_map(|l| l.strip_prefix("Seed: "))
        .unwrap();
    let subject = host.dir.join("echo_module.nk");
    std::fs::write(&subject, seed).unwrap();
    let subject = subject.to_str().unwrap().to_string();

    let (v1, key) = host.sign(
        "echo.wasm",
        "echo-v1",
        &["--subject", &subject, "--rev", "1"],
    );
    host.ctl_ok(&["start-actor", v1.to_str().unwrap(), "--count", "4"]);
    let (v2, key2) = host.sign(
        "echo.wasm",
        "echo-v2",
        &["--subject", &subject, "--rev", "2"],
    );
    assert_eq!(key, key2);

    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (dir, key) = (host.state_dir(), key.clone());
            let (failures, stop) = (failures.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || calls < 3 {
                    let mut command = std::process::Command::new(bin("host-core"));
                    command.arg("ctl").arg("--state-dir").arg(&dir);
                    command.args(["call", &key, "Echo.Echo", "42"]);
                    let out = run(command);
                    if !out.status.success() || stdout(&out) != "42" {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    host.ctl_ok(&["update-actor", &key, v2.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls: u32 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(calls >= 9);
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    let actor = &host.inventory()["actors"][0];
    assert_eq!(actor["rev"], 2);
    assert_eq!(actor["name"], "echo-v2");
    assert_eq!(actor["count"], 4);

    // Not a higher revision, or another actor's wasm: refused.
    let err = host.ctl_err(&["update-actor", &key, v1.to_str().unwrap()]);
    assert!(err.contains("not higher"), "{err}");
    let (other, _) = host.sign("echo.wasm", "someone-else", &["--rev", "9"]);
    let err = host.ctl_err(&["update-actor", &key, other.to_str().unwrap()]);
    assert!(err.contains("not"), "{err}");
}

#[test]
fn worker_kill_fails_calls_in_flight_and_restores_actors() {
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "echo", &["--call-alias", "echoer"]);
    let looping = host.start_actor("loop.wasm", "loop", &[]);
    host.ctl_ok(&["scale-actor", &echo, "3"]);
    let component = host.start_actor("echo_component.wasm", "component", &[]);
    let worker = host.worker_pid().expect("worker pid");

    // Calls in flight: the looping actor holds them until its deadline.
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (dir, key) = (host.state_dir(), looping.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut command = std::process::Command::new(bin("host-core"));
                command.arg("ctl").arg("--state-dir").arg(&dir);
                command.args(["call", &key, "Loop.Forever"]);
                (run(command), started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for call in in_flight {
        let (output, _) = call.join().unwrap();
        assert!(!output.status.success());
        let err = stderr(&output);
        assert!(
            err.contains("worker died") || err.contains("killed"),
            "{err}"
        );
    }
    // They failed because the worker died (the message says so), not at the
    // 1 s deadline; this bound only catches a hang on a loaded machine.
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed_at.elapsed()
    );

    assert!(eventually(Duration::from_secs(10), || host
        .worker_pid()
        .is_some_and(|p| p != worker)));
    assert!(!process_alive(worker));
    assert_eq!(host.ctl_ok(&["call", "echoer", "Echo.Echo", "7"]), "7");
    assert_eq!(host.ctl_ok(&["call", &component, "Echo", "8"]), "8");
    let inventory = host.inventory();
    assert_eq!(inventory["processes"][0]["restarts"], 1);
    let actors = inventory["actors"].as_array().unwrap();
    assert_eq!(actors.len(), 3);
    assert_eq!(
        actors.iter().find(|a| a["key"] == echo.as_str()).unwrap()["count"],
        3
    );
}

/// Connects to the control socket and sends raw bytes.
fn raw_control(host: &TestHost, bytes: &[u8]) -> Vec<u8> {
    raw_exchange(&host.state_dir().join("host.sock"), bytes)
}

/// Sends `bytes` on a fresh connection to `socket`, closes the sending side
/// and returns everything the other side answered.
fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[test]
fn control_socket_survives_bad_input_and_is_private() {
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    let socket = host.state_dir().join("host.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(host.state_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // Garbage, a truncated frame, an oversized frame, a wrong version, and a
    // good handshake followed by garbage.
    let garbage = raw_control(&host, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let truncated = raw_control(&host, &[0, 0, 0, 100, 1, 2, 3]);
    let oversized = raw_control(&host, &[0xff, 0xff, 0xff, 0xff, 0, 0]);
    let hello = |version: u32| {
        rmp_serde::to_vec_named(&wire::handshake::Hello {
            version,
            role: wire::handshake::Role::Control,
            token: String::new(),
            key: String::new(),
        })
        .unwrap()
    };
    let wrong_version = raw_control(&host, &frame(&hello(999)));
    let decode_welcome =
        |bytes: &[u8]| -> wire::handshake::Welcome { rmp_serde::from_slice(&bytes[4..]).unwrap() };
    assert!(matches!(
        decode_welcome(&wrong_version),
        wire::handshake::Welcome::Refused { reason } if reason.contains("version")
    ));
    let mut after_hello = frame(&hello(wire::PROTOCOL_VERSION));
    after_hello.extend_from_slice(&frame(&[0xc1, 0xc1, 0xc1]));
    let answer = raw_control(&host, &after_hello);
    assert!(answer.len() > 4);
    let welcome_len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
    let reply: wire::control::ControlResponse =
        rmp_serde::from_slice(&answer[4 + 4 + welcome_len..]).unwrap();
    assert!(
        matches!(reply, wire::control::ControlResponse::Err(ref e) if e.message.contains("bad request"))
    );

    let mut oversized_after_hello = frame(&hello(wire::PROTOCOL_VERSION));
    oversized_after_hello.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    let answer = raw_control(&host, &oversized_after_hello);
    let welcome_len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
    let reply: wire::control::ControlResponse =
        rmp_serde::from_slice(&answer[4 + 4 + welcome_len..]).unwrap();
    assert!(
        matches!(reply, wire::control::ControlResponse::Err(ref e) if e.message.contains("exceeds"))
    );

    // Whatever the host said to the garbage, it is still serving.
    let _ = (garbage, truncated, oversized);
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "1"]), "1");
    assert_eq!(host.inventory()["actors"].as_array().unwrap().len(), 1);
}

/// The worker's data socket (providers' direct channels) is private and
/// refuses whoever `host-core` did not admit; garbage does not disturb it.
#[test]
fn worker_data_socket_refuses_strangers_and_survives_garbage() {
    use wire::handshake::{Hello, Role, Welcome};
    let host = TestHost::start();
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    let worker = host.worker_pid().unwrap();
    let socket = host.state_dir().join("worker-data.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let refusal = |role: Role, token: &str| -> String {
        let hello = rmp_serde::to_vec_named(&Hello {
            version: wire::PROTOCOL_VERSION,
            role,
            token: token.into(),
            key: "VSTRANGER".into(),
        })
        .unwrap();
        let answer = raw_exchange(&socket, &frame(&hello));
        match rmp_serde::from_slice(&answer[4..]).unwrap() {
            Welcome::Refused { reason } => reason,
            other => panic!("a stranger was let in: {other:?}"),
        }
    };
    assert!(refusal(Role::Provider, "0123456789abcdef").contains("token"));
    assert!(refusal(Role::Control, "").contains("providers"));
    raw_exchange(&socket, b"GET / HTTP/1.1\r\n\r\n");
    raw_exchange(&socket, &[0, 0, 0, 100, 1, 2, 3]);
    raw_exchange(&socket, &[0xff, 0xff, 0xff, 0xff, 0, 0]);

    assert_eq!(host.worker_pid(), Some(worker));
    assert_eq!(host.ctl_ok(&["call", &echo, "Echo.Echo", "1"]), "1");
}

#[test]
fn stop_host_exits_cleanly_and_leaves_no_process() {
    let mut host = TestHost::start();
    host.start_actor("echo.wasm", "echo", &[]);
    let worker = host.worker_pid().unwrap();
    let asked = std::time::Instant::now();
    host.ctl_ok(&["stop-host"]);
    let status = host.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    // The worker exits when its channel closes; host-core kills it only if
    // it lingers 2 s, which would mean the channel was held open.
    let took = asked.elapsed();
    eprintln!("stop-host took {took:?}");
    assert!(
        took < Duration::from_millis(1900),
        "stop-host took {took:?}:\n{}",
        host.log()
    );
    assert!(eventually(Duration::from_secs(2), || !process_alive(
        worker
    )));
    assert!(!host.state_dir().join("host.sock").exists());
    let err = host.ctl_err(&["inventory"]);
    assert!(err.contains("no host is running"), "{err}");
}

#[test]
fn sigterm_and_host_kill_take_the_worker_down() {
    let mut host = TestHost::start();
    let worker = host.worker_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(host.wait_exit(Duration::from_secs(10)).success());
    assert!(eventually(Duration::from_secs(2), || !process_alive(
        worker
    )));

    let mut host = TestHost::start();
    let worker = host.worker_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    host.wait_exit(Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(2), || !process_alive(
        worker
    )));
}

#[test]
fn a_second_host_on_the_same_state_dir_is_refused() {
    let host = TestHost::start();
    let output = host_core(
        &host.keys,
        &["run", "--state-dir", host.state_dir().to_str().unwrap()],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("already running"),
        "{}",
        stderr(&output)
    );
    host.ctl_ok(&["inventory"]);
}
