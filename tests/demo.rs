//! The first run: the demo manifest with the httpserver and keyvalue
//! providers and the hello and kvcounter actors, through a real HTTP client.

use std::time::Duration;

use crate::support::*;

const KV: &str = "wasmcloud:keyvalue";

fn counter_of(body: &str) -> i64 {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    value["counter"].as_i64().unwrap()
}

#[test]
fn demo_manifest_serves_http_and_keeps_counts() {
    let dir = temp_dir("demo");
    prepare_demo(&dir);
    let demo = start_demo(dir, free_port(), free_port());
    let inventory = demo.host.inventory();
    assert_eq!(inventory["actors"].as_array().unwrap().len(), 2);
    assert_eq!(inventory["providers"].as_array().unwrap().len(), 2);

    assert_eq!(http_get(demo.hello, "/"), (200, "Hello World".into()));
    assert_eq!(
        http_get(demo.hello, "/?name=Ada"),
        (200, "Hello Ada".into())
    );
    let (status, body) = http_get(demo.counter, "/a");
    assert_eq!(status, 200, "{body}");
    let first = counter_of(&body);
    assert_eq!(counter_of(&http_get(demo.counter, "/a").1), first + 1);
    assert_eq!(counter_of(&http_get(demo.counter, "/other").1), 1);

    // 64 concurrent requests, half to each actor, all answered correctly.
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (hello, counter) = (demo.hello, demo.counter);
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    assert_eq!(
                        http_get(hello, &format!("/?name=n{i}")),
                        (200, format!("Hello n{i}"))
                    );
                } else {
                    let (status, body) = http_get(counter, "/concurrent");
                    assert_eq!(status, 200, "{body}");
                    counter_of(&body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(counter_of(&http_get(demo.counter, "/concurrent").1), 33);

    // Oversized and malformed requests.
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, _) = http(
        demo.hello,
        &format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        ),
    );
    assert_eq!(status, 413);
    // As curl sends a large body: the 413 comes before any of it is sent.
    let (status, _) = http(
        demo.hello,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(status, 413);
    let (status, _) = http(demo.hello, "BLAH\r\n\r\n");
    assert_eq!(status, 400);

    // kill -9 of the keyvalue provider: restarted, acknowledged counts intact.
    let kv = demo.host.inventory()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["contract_id"] == KV)
        .cloned()
        .unwrap();
    let kv_key = kv["key"].as_str().unwrap().to_string();
    let pid = kv["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || demo
        .host
        .provider(&kv_key, "default")
        .is_some_and(
            |p| p["state"] == "running" && p["pid"].as_i64() != Some(pid as i64)
        )));
    assert_eq!(counter_of(&http_get(demo.counter, "/a").1), first + 2);

    // kill -9 of the whole host, then a restart on the same state: intact.
    let Demo {
        host,
        hello,
        counter,
    } = demo;
    let dir = host.into_dir();
    let demo = start_demo(dir, hello, counter);
    assert_eq!(counter_of(&http_get(demo.counter, "/a").1), first + 3);
    assert_eq!(http_get(demo.hello, "/"), (200, "Hello World".into()));
}

/// Calls between providers and actors take the direct channels to the
/// worker, not a hop through `host-core`: with `host-core` stopped (SIGSTOP),
/// HTTP requests to hello (httpserver -> actor) and to kvcounter (httpserver
/// -> actor -> keyvalue) are still answered. After kill -9 of the worker,
/// both are served again.
#[test]
fn http_reaches_actors_over_the_direct_channel_and_survives_a_worker_restart() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let dir = temp_dir("direct");
    prepare_demo(&dir);
    let demo = start_demo(dir, free_port(), free_port());
    let host = Pid::from_raw(demo.host.pid() as i32);
    // The channel opens just after the provider is ready, so allow a few tries.
    let served_while_host_core_is_stopped = || {
        (0..20).any(|_| {
            kill(host, Signal::SIGSTOP).unwrap();
            let hello = http_get_within(demo.hello, "/?name=direct", Duration::from_secs(1));
            let counter = http_get_within(demo.counter, "/direct", Duration::from_secs(1));
            kill(host, Signal::SIGCONT).unwrap();
            let served = hello == Some((200, "Hello direct".into()))
                && counter.is_some_and(|(status, body)| status == 200 && body.contains("counter"));
            if !served {
                std::thread::sleep(Duration::from_millis(250));
            }
            served
        })
    };
    assert!(
        served_while_host_core_is_stopped(),
        "no request went direct"
    );

    let worker = demo.host.worker_pid().unwrap();
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    assert!(eventually(Duration::from_secs(10), || demo
        .host
        .worker_pid()
        .is_some_and(|pid| pid != worker)
        && http_get(demo.hello, "/") == (200, "Hello World".into())));
    // host-core admits the providers to the new worker again (it retries if
    // an admission is lost), so both directions go direct once more.
    assert!(
        served_while_host_core_is_stopped(),
        "no request went direct after the worker restarted"
    );
}

#[test]
fn every_keyvalue_operation_through_an_actor() {
    let host = TestHost::start();
    let dir = host.dir.clone();
    prepare_demo(&dir);
    let component = host.start_actor("echo_component.wasm", "component", &["--cap", KV]);
    let provider = host.ctl_ok(&["start-provider", dir.join("keyvalue.par").to_str().unwrap()]);
    host.ctl_ok(&["link", "put", &component, &provider, KV]);
    let op = |operation: &str, args: serde_json::Value| -> serde_json::Value {
        let payload: Vec<u8> = rmp_serde::to_vec_named(&args).unwrap();
        let out = host.ctl_ok(&[
            "call",
            &component,
            "Forward",
            &serde_json::json!({"target": KV, "operation": operation, "payload": payload})
                .to_string(),
        ]);
        serde_json::from_str(&out).unwrap_or(serde_json::Value::String(out))
    };
    use serde_json::json;
    op(
        "KeyValue.Set",
        json!({"key": "k", "value": "v", "expires": 0}),
    );
    assert_eq!(
        op("KeyValue.Get", json!("k")),
        json!({"value": "v", "exists": true})
    );
    assert_eq!(op("KeyValue.Contains", json!("k")), json!(true));
    assert_eq!(op("KeyValue.Del", json!("k")), json!(true));
    assert_eq!(op("KeyValue.Get", json!("k"))["exists"], json!(false));
    assert_eq!(
        op("KeyValue.Increment", json!({"key": "n", "value": 5})),
        json!(5)
    );
    assert_eq!(
        op("KeyValue.Increment", json!({"key": "n", "value": -2})),
        json!(3)
    );
    assert_eq!(
        op("KeyValue.ListAdd", json!({"listName": "l", "value": "a"})),
        json!(1)
    );
    assert_eq!(
        op("KeyValue.ListAdd", json!({"listName": "l", "value": "b"})),
        json!(2)
    );
    assert_eq!(
        op(
            "KeyValue.ListRange",
            json!({"listName": "l", "start": 0, "stop": -1})
        ),
        json!(["a", "b"])
    );
    assert_eq!(
        op("KeyValue.ListDel", json!({"listName": "l", "value": "a"})),
        json!(true)
    );
    assert_eq!(op("KeyValue.ListClear", json!("l")), json!(true));
    assert_eq!(
        op("KeyValue.SetAdd", json!({"setName": "s", "value": "x"})),
        json!(1)
    );
    assert_eq!(
        op("KeyValue.SetAdd", json!({"setName": "t", "value": "x"})),
        json!(1)
    );
    assert_eq!(
        op("KeyValue.SetAdd", json!({"setName": "t", "value": "y"})),
        json!(1)
    );
    assert_eq!(op("KeyValue.SetQuery", json!("t")), json!(["x", "y"]));
    assert_eq!(
        op("KeyValue.SetIntersection", json!(["s", "t"])),
        json!(["x"])
    );
    assert_eq!(
        op("KeyValue.SetUnion", json!(["s", "t"])),
        json!(["x", "y"])
    );
    assert_eq!(
        op("KeyValue.SetDel", json!({"setName": "t", "value": "y"})),
        json!(1)
    );
    assert_eq!(op("KeyValue.SetClear", json!("t")), json!(true));
}

/// A stop gives each provider its Shutdown and waits for it to exit: the
/// httpserver provider closes its channel first and then drains its
/// listeners, and must not be signalled in between.
#[test]
fn stopping_the_host_lets_both_providers_exit_on_their_own() {
    let dir = temp_dir("demo-stop");
    prepare_demo(&dir);
    let mut demo = start_demo(dir, free_port(), free_port());
    assert_eq!(http_get(demo.hello, "/"), (200, "Hello World".into()));
    assert_eq!(http_get(demo.counter, "/a").0, 200);
    demo.host.ctl_ok(&["stop-host"]);
    assert!(demo.host.wait_exit(Duration::from_secs(15)).success());
    let log = without_colours(&demo.host.log());
    let exits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("provider exited"))
        .collect();
    assert_eq!(exits.len(), 2, "one exit per provider:\n{log}");
    for exit in exits {
        assert!(
            exit.contains("code=Some(0)") && exit.contains("signal=None"),
            "a provider was ended by a signal, not by its Shutdown: {exit}\n{log}"
        );
    }
}

/// The log as text: tracing colours its fields even when writing to a file.
fn without_colours(log: &str) -> String {
    let mut text = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(start) = rest.find('\u{1b}') {
        text.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    text.push_str(rest);
    text
}

#[test]
fn bad_manifests_name_the_line_and_start_nothing() {
    let dir = temp_dir("manifest");
    let bad = dir.join("bad.toml");
    let run = |text: &str| -> String {
        std::fs::write(&bad, text).unwrap();
        let out = host_core(
            &dir.join("keys"),
            &[
                "run",
                "--state-dir",
                dir.join("state").to_str().unwrap(),
                "--manifest",
                bad.to_str().unwrap(),
            ],
        );
        assert!(!out.status.success());
        assert!(!dir.join("state").join("host.sock").exists());
        stderr(&out)
    };
    let err = run("[[actors]]\nname = \"a\"\nfile = \n");
    assert!(err.contains("bad.toml:3"), "{err}");
    let err = run("[[actors]]\nname = \"a\"\nfile = \"nowhere.wasm\"\n");
    assert!(
        err.contains("bad.toml:3") && err.contains("cannot read"),
        "{err}"
    );
    let err = run("\n\n[[links]]\nactor = \"ghost\"\nprovider = \"p\"\ncontract = \"c\"\n");
    assert!(err.contains("bad.toml:4") && err.contains("ghost"), "{err}");
    std::fs::write(
        dir.join("unsigned.wasm"),
        std::fs::read(fixture("echo.wasm")).unwrap(),
    )
    .unwrap();
    let err = run("[[actors]]\nname = \"a\"\nfile = \"unsigned.wasm\"\n");
    assert!(
        err.contains("bad.toml:3") && err.contains("unsigned"),
        "{err}"
    );
    let err = run("[[actors]]\nname = \"a\"\nfile = \"x.wasm\"\nport = \"${NOT_SET_ANYWHERE}\"\n");
    assert!(
        err.contains("bad.toml:4") && err.contains("NOT_SET_ANYWHERE"),
        "{err}"
    );
}

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed here; skipping");
        return;
    };
    assert!(out.status.success());
    let dir = temp_dir("unit");
    let unit =
        std::fs::read_to_string(workspace_root().join("deploy").join("wasmhost.service")).unwrap();
    // Point ExecStart at the binary we built, since verify checks it exists.
    let unit = unit.replace(
        "/usr/local/lib/wasmhost/host-core",
        bin("host-core").to_str().unwrap(),
    );
    let path = dir.join("wasmhost.service");
    std::fs::write(&path, unit).unwrap();
    let mut command = std::process::Command::new("systemd-analyze");
    command.arg("verify").arg(&path);
    let out = run(command);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    let own: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("wasmhost.service"))
        .collect();
    assert!(
        out.status.success() && own.is_empty(),
        "systemd-analyze verify: {text}"
    );
}

/// kvcounter's port must not accept before its keyvalue store is up: the
/// first request that gets through, polled from before the host starts,
/// is counted, not refused with "provider ... is not running".
#[test]
fn the_demo_counter_answers_its_first_request() {
    let dir = temp_dir("demo-first");
    prepare_demo(&dir);
    let (hello, counter) = (free_port(), free_port());
    let poller = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(answer) = http_get_within(counter, "/first", Duration::from_secs(5)) {
                return Some(answer);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let demo = start_demo(dir, hello, counter);
    let (status, body) = poller
        .join()
        .unwrap()
        .expect("the counter port never answered");
    assert_eq!(status, 200, "{body}");
    assert_eq!(counter_of(&body), 1);
    drop(demo);
}
