//! Actors and provider archives from a real OCI registry (Debian's
//! `docker-registry`, on loopback): `host-core push` and `pull`, `ctl`
//! verbs and manifests by reference, the policy (plain HTTP, `latest`,
//! credentials), and a restart served from the digest cache with the
//! registry stopped.

use std::path::Path;

use test_support::registry::Registry;

use crate::support::*;

const KV: &str = "wasmcloud:keyvalue";

/// `host-core push REF FILE [ARGS]` (plain HTTP to the test registry);
/// returns the manifest digest it printed.
fn push(keys: &Path, reference: &str, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["push", reference, file.to_str().unwrap(), "--insecure"];
    args.extend_from_slice(extra);
    let out = host_core_ok(keys, &args);
    let digest = out.rsplit(' ').next().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{out}");
    digest
}

fn insecure(registry: &Registry) -> Vec<String> {
    vec!["--oci-allowed-insecure".into(), registry.addr.clone()]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn actor_summary(host: &TestHost, key: &str) -> serde_json::Value {
    host.inventory()["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("actor {key} is not running"))
}

#[test]
fn actors_and_providers_start_by_tag_and_by_digest_and_pull_gives_the_bytes_back() {
    let registry = Registry::start();
    let host = TestHost::start_with(&strs(&insecure(&registry)));
    let (echo, key) = host.sign("echo.wasm", "echo", &[]);
    let tag = format!("{}/tests/echo:0.1.0", registry.addr);
    let digest = push(&host.keys, &tag, &echo, &[]);

    // By tag, then by digest with `oci://`: the same actor, which answers.
    assert_eq!(host.ctl_ok(&["start-actor", &tag]), key);
    assert_eq!(actor_summary(&host, &key)["image_ref"], tag.as_str());
    let reply = host.ctl_ok(&["call", &key, "Echo.Echo", "[1,2]"]);
    assert!(reply.contains("1") && reply.contains("2"), "{reply}");
    host.ctl_ok(&["stop-actor", &key]);
    let pinned = format!("oci://{}/tests/echo@{digest}", registry.addr);
    assert_eq!(host.ctl_ok(&["start-actor", &pinned]), key);

    // `pull` writes the pushed bytes, actor and archive alike.
    let pulled = host.dir.join("pulled.wasm");
    host_core_ok(
        &host.keys,
        &["pull", &tag, "-o", pulled.to_str().unwrap(), "--insecure"],
    );
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&echo).unwrap()
    );

    let (par, provider) = host.par("kv", KV);
    let par_ref = format!("{}/tests/kv:0.1.0", registry.addr);
    push(&host.keys, &par_ref, &par, &[]);
    let pulled_par = host.dir.join("pulled.par");
    host_core_ok(
        &host.keys,
        &[
            "pull",
            &par_ref,
            "-o",
            pulled_par.to_str().unwrap(),
            "--insecure",
        ],
    );
    assert_eq!(
        std::fs::read(&pulled_par).unwrap(),
        std::fs::read(&par).unwrap()
    );
    assert_eq!(host.ctl_ok(&["start-provider", &par_ref]), provider);
    assert!(
        eventually(COMMAND_TIMEOUT, || host
            .provider(&provider, "default")
            .is_some_and(|p| p["state"] == "running")),
        "the provider from the registry never ran:\n{}",
        host.log()
    );
    assert_eq!(
        host.provider(&provider, "default").unwrap()["image_ref"],
        par_ref.as_str()
    );

    // One line for each thing that can be wrong with a reference.
    let missing = format!("{}/tests/echo:9.9.9", registry.addr);
    let err = host.ctl_err(&["start-actor", &missing]);
    assert!(err.contains("was not found"), "{err}");
    let err = host.ctl_err(&["start-provider", &tag]);
    assert!(err.contains("is not a provider archive"), "{err}");
    let nowhere = format!("127.0.0.1:{}/tests/echo:0.1.0", free_port());
    let err = host.ctl_err(&["start-actor", &nowhere]);
    assert!(err.contains("cannot be reached"), "{err}");
    let wrong_digest = format!("{}/tests/echo@sha256:{}", registry.addr, "0".repeat(64));
    let err = host.ctl_err(&["start-actor", &wrong_digest]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn a_moved_tag_is_fetched_again_and_update_actor_takes_a_reference() {
    let registry = Registry::start();
    let host = TestHost::start_with(&strs(&insecure(&registry)));
    let tag = format!("{}/tests/versioned:0.1.0", registry.addr);
    let (v1, key) = host.sign("echo.wasm", "versioned", &["--rev", "1"]);
    push(&host.keys, &tag, &v1, &[]);
    assert_eq!(host.ctl_ok(&["start-actor", &tag]), key);
    assert_eq!(actor_summary(&host, &key)["rev"], 1);

    // The tag now points at revision 2: the host fetches it again.
    let (v2, same) = host.sign("echo.wasm", "versioned", &["--rev", "2"]);
    assert_eq!(same, key);
    push(&host.keys, &tag, &v2, &[]);
    host.ctl_ok(&["update-actor", &key, &tag]);
    assert_eq!(actor_summary(&host, &key)["rev"], 2);
}

#[test]
fn plain_http_and_latest_are_refused_unless_allowed() {
    let registry = Registry::start();
    let strict = TestHost::start();
    let (echo, key) = strict.sign("echo.wasm", "echo", &[]);
    let tag = format!("{}/tests/echo:0.1.0", registry.addr);
    push(&strict.keys, &tag, &echo, &[]);
    let err = strict.ctl_err(&["start-actor", &tag]);
    assert!(
        err.contains("speaks only plain HTTP") && err.contains("--oci-allowed-insecure"),
        "{err}"
    );

    // `latest`, explicit or implied, needs --oci-allow-latest (push too).
    let latest = format!("{}/tests/echo:latest", registry.addr);
    let out = host_core(
        &strict.keys,
        &["push", &latest, echo.to_str().unwrap(), "--insecure"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tagged `latest`"), "{}", stderr(&out));
    push(&strict.keys, &latest, &echo, &["--allow-latest"]);
    let listed = TestHost::start_with(&strs(&insecure(&registry)));
    let err = listed.ctl_err(&["start-actor", &latest]);
    assert!(err.contains("--oci-allow-latest"), "{err}");
    let untagged = format!("{}/tests/echo", registry.addr);
    let err = listed.ctl_err(&["start-actor", &untagged]);
    assert!(err.contains("has no tag"), "{err}");

    let mut args = insecure(&registry);
    args.push("--oci-allow-latest".into());
    let allowing = TestHost::start_with(&strs(&args));
    assert_eq!(allowing.ctl_ok(&["start-actor", &untagged]), key);
}

#[test]
fn basic_auth_credentials_come_from_flags_or_the_environment() {
    let registry = Registry::start_with_user("deployer", "s3cret");
    let host = TestHost::start_with(&strs(&insecure(&registry)));
    let (echo, key) = host.sign("echo.wasm", "echo", &[]);
    let tag = format!("{}/private/echo:0.1.0", registry.addr);
    let out = host_core(
        &host.keys,
        &["push", &tag, echo.to_str().unwrap(), "--insecure"],
    );
    assert!(stderr(&out).contains("denied access"), "{}", stderr(&out));
    push(
        &host.keys,
        &tag,
        &echo,
        &["--user", "deployer", "--password", "s3cret"],
    );

    // Without credentials the host is denied; with them, it starts.
    let err = host.ctl_err(&["start-actor", &tag]);
    assert!(err.contains("denied access"), "{err}");
    let mut args = insecure(&registry);
    args.extend(["--oci-registry".into(), registry.addr.clone()]);
    args.extend(["--oci-user".into(), "deployer".into()]);
    let with_env = TestHost::start_in(
        temp_dir("oci-auth"),
        &strs(&args),
        &[("OCI_REGISTRY_PASSWORD", "s3cret".into())],
    );
    assert_eq!(with_env.ctl_ok(&["start-actor", &tag]), key);
    let mut wrong = insecure(&registry);
    wrong.extend(["--oci-registry".into(), registry.addr.clone()]);
    wrong.extend(["--oci-user".into(), "deployer".into()]);
    wrong.extend(["--oci-password".into(), "wrong".into()]);
    let denied = TestHost::start_with(&strs(&wrong));
    let err = denied.ctl_err(&["start-actor", &tag]);
    assert!(err.contains("denied access"), "{err}");
}

/// The demo, pushed to a registry and run from a manifest of references;
/// restarted with the registry stopped, it is served from the cache.
#[test]
fn a_manifest_of_references_restarts_from_the_cache_with_the_registry_stopped() {
    let mut registry = Registry::start();
    let dir = temp_dir("oci-demo");
    prepare_demo(&dir);
    let keys = dir.join("keys");
    let mut manifest = std::fs::read_to_string(demo_manifest()).unwrap();
    for file in [
        "hello.wasm",
        "kvcounter.wasm",
        "keyvalue.par",
        "httpserver.par",
    ] {
        let name = file.split('.').next().unwrap();
        let reference = format!("{}/demo/{name}:0.1.0", registry.addr);
        push(&keys, &reference, &dir.join(file), &[]);
        manifest = manifest.replace(
            &format!("file = \"${{DEMO_DIR:-../target/demo}}/{file}\""),
            &format!("image = \"{reference}\""),
        );
    }
    assert!(!manifest.contains("file = "), "{manifest}");
    let manifest_path = dir.join("registry-manifest.toml");
    std::fs::write(&manifest_path, manifest).unwrap();

    let (hello, counter) = (free_port(), free_port());
    let mut args = insecure(&registry);
    args.extend(["--manifest".into(), manifest_path.display().to_string()]);
    let start = |dir: std::path::PathBuf| {
        TestHost::start_in(
            dir,
            &strs(&args),
            &[
                ("HELLO_PORT", hello.to_string()),
                ("KVCOUNTER_PORT", counter.to_string()),
            ],
        )
    };
    let host = start(dir);
    let served = |host: &TestHost| {
        let got = http_get_within(counter, "/oci", COMMAND_TIMEOUT);
        assert!(
            matches!(&got, Some((200, _))),
            "{got:?}\nhost log:\n{}",
            host.log()
        );
        let got = http_get_within(hello, "/", COMMAND_TIMEOUT);
        assert!(matches!(&got, Some((200, _))), "{got:?}");
    };
    served(&host);
    let dir = host.into_dir();

    registry.stop();
    let host = start(dir);
    served(&host);
    assert!(
        host.log().contains("from the cache"),
        "no warning that the cache was used:\n{}",
        host.log()
    );
}
