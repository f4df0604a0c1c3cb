//! The lattice end to end: real `nats-server` with JetStream, several
//! `host-core run --nats` hosts on this machine, driven by wasmCloud's own
//! control client (`wasmcloud-control-interface` 0.33, the 0.82 protocol)
//! and by each host's local control socket.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use test_support::NatsServer;
use wasmcloud_control_interface::{Client, ClientBuilder};

use crate::support::*;

const KV: &str = "wasmcloud:keyvalue";
/// What the lattice gets to settle (a claim stored, an event sent).
const SETTLE: Duration = Duration::from_secs(10);

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The cluster seed the hosts of a test's lattice share (each host
/// accepts only invocations its cluster issuers signed).
pub(crate) fn cluster_seed() -> String {
    let dir = temp_dir("cluster");
    let out = host_core_ok(&dir, &["keys", "gen", "cluster"]);
    let _ = std::fs::remove_dir_all(&dir);
    out.lines()
        .find_map(|l| l.strip_prefix("Seed: "))
        .expect("a seed")
        .trim()
        .to_owned()
}

/// A host that joined `lattice` through `nats` with the cluster `seed`,
/// files allowed, a short heartbeat, with `extra` flags.
pub(crate) fn member(nats: &NatsServer, lattice: &str, seed: &str, extra: &[&str]) -> TestHost {
    let url = nats.url();
    let mut args = vec![
        "--nats",
        url.as_str(),
        "--lattice",
        lattice,
        "--cluster-seed",
        seed,
        "--allow-file-load",
        "--heartbeat-interval-ms",
        "1000",
    ];
    args.extend_from_slice(extra);
    TestHost::start_in(temp_dir("lat"), &args, &[])
}

pub(crate) fn host_id(host: &TestHost) -> String {
    host.inventory()["host_id"].as_str().unwrap().to_owned()
}

pub(crate) async fn client(nats: &NatsServer, lattice: &str) -> (async_nats::Client, Client) {
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let ctl = ClientBuilder::new(nc.clone())
        .lattice(lattice)
        .timeout(Duration::from_secs(5))
        .auction_timeout(Duration::from_millis(800))
        .build();
    (nc, ctl)
}

/// Polls `check` until it holds or `within` passes.
pub(crate) async fn until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next event of type `name` (`com.wasmcloud.lattice.{name}`) whose
/// data satisfies `filter`, as JSON.
async fn next_event(
    events: &mut tokio::sync::mpsc::Receiver<cloudevents::Event>,
    name: &str,
    filter: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let wanted = format!("com.wasmcloud.lattice.{name}");
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within {SETTLE:?}"))
            .expect("the event stream ended");
        let json = serde_json::to_value(&event).unwrap();
        if json["type"] == wanted.as_str() && filter(&json["data"]) {
            assert_eq!(json["specversion"], "1.0", "{json}");
            return json;
        }
    }
}

/// `ctl call` arguments: the hello actor's HTTP request that reads the
/// keyvalue provider.
fn hello_call(actor: &str) -> [String; 4] {
    [
        "call".into(),
        actor.into(),
        "HttpServer.HandleRequest".into(),
        http_request("/kv", ""),
    ]
}

/// A raw control request, for payloads wasmCloud's client would not send.
async fn raw_ctl(nc: &async_nats::Client, subject: String, body: &str) -> serde_json::Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        nc.request(subject, body.to_owned().into()),
    )
    .await
    .expect("no answer within 5 s")
    .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

pub(crate) async fn inventory_of(
    ctl: &Client,
    host: &str,
) -> wasmcloud_control_interface::HostInventory {
    ctl.get_host_inventory(host).await.unwrap()
}

#[test]
fn wasmclouds_control_client_drives_every_verb() {
    let nats = NatsServer::start("verbs");
    let lattice = "verbs";
    let seed = cluster_seed();
    let a = member(&nats, lattice, &seed, &["--label", "zone=a"]);
    let b = member(&nats, lattice, &seed, &["--label", "zone=b"]);
    let (a_id, b_id) = (host_id(&a), host_id(&b));
    let (actor_path, actor) = a.sign(
        "hello.wasm",
        "hello",
        &["--cap", "wasmcloud:httpserver", "--cap", KV],
    );
    let actor_ref = actor_path.to_str().unwrap().to_owned();
    let (par, provider) = a.par("fixture", KV);
    let provider_ref = format!("file://{}", par.display());
    runtime().block_on(async {
        let (nc, ctl) = client(&nats, lattice).await;
        let mut events = ctl
            .events_receiver(
                [
                    "actors_started",
                    "actor_scaled",
                    "actors_stopped",
                    "actors_start_failed",
                    "provider_started",
                    "provider_stopped",
                    "linkdef_set",
                    "linkdef_deleted",
                    "host_heartbeat",
                    "health_check_status",
                    "host_stopped",
                    "config_set",
                ]
                .map(String::from)
                .to_vec(),
            )
            .await
            .unwrap();

        // ping.hosts: both hosts, with their labels and the platform's.
        let hosts = ctl.get_hosts().await.unwrap();
        let mut ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
        ids.sort_unstable();
        let mut expected = vec![a_id.as_str(), b_id.as_str()];
        expected.sort_unstable();
        assert_eq!(ids, expected);
        let host_a = hosts.iter().find(|h| h.id == a_id).unwrap();
        let labels = host_a.labels.as_ref().unwrap();
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["hostcore.os"], std::env::consts::OS);
        assert!(labels.contains_key("hostcore.arch") && labels.contains_key("hostcore.osfamily"));
        assert_eq!(host_a.lattice(), Some(&lattice.to_owned()));
        assert!(host_a.cluster_issuers.as_ref().unwrap().starts_with('C'));

        // get.{host}.inv
        let inventory = inventory_of(&ctl, &a_id).await;
        assert_eq!(inventory.host_id, a_id);
        assert!(inventory.actors.is_empty() && inventory.providers.is_empty());
        assert!(inventory.issuer.starts_with('C'));

        // cmd.{host}.scale from a file reference: acked at once, then started.
        let ack = ctl.scale_actor(&a_id, &actor_ref, 1, None).await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        let started = next_event(&mut events, "actors_started", |d| {
            d["public_key"] == actor.as_str()
        })
        .await;
        assert_eq!(started["source"], a_id.as_str());
        assert_eq!(started["data"]["image_ref"], actor_ref.as_str());
        assert_eq!(started["data"]["count"], 1);
        let inventory = inventory_of(&ctl, &a_id).await;
        assert_eq!(inventory.actors.len(), 1);
        assert_eq!(inventory.actors[0].id, actor);
        assert_eq!(
            inventory.actors[0].image_ref.as_deref(),
            Some(actor_ref.as_str())
        );
        assert_eq!(inventory.actors[0].instances[0].max_instances, 1);
        // Scaled by its reference.
        let ack = ctl.scale_actor(&a_id, &actor_ref, 3, None).await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        let scaled = next_event(&mut events, "actor_scaled", |d| {
            d["public_key"] == actor.as_str()
        })
        .await;
        assert_eq!(scaled["data"]["max_instances"], 3);
        // cmd.{host}.upd: a higher revision of the same actor.
        let (newer, same) = a.sign(
            "hello.wasm",
            "hello",
            &["--cap", "wasmcloud:httpserver", "--cap", KV, "--rev", "2"],
        );
        assert_eq!(same, actor);
        let ack = ctl
            .update_actor(&a_id, &actor, newer.to_str().unwrap(), None)
            .await
            .unwrap();
        assert!(ack.accepted, "{ack:?}");
        assert!(
            until(SETTLE, || async {
                inventory_of(&ctl, &a_id).await.actors[0].instances[0].revision == 2
            })
            .await,
            "the update never showed in the inventory"
        );
        let ack = ctl
            .update_actor(&a_id, "MNOSUCHACTOR", newer.to_str().unwrap(), None)
            .await
            .unwrap();
        assert!(!ack.accepted && ack.error.contains("no actor"), "{ack:?}");
        // An unknown scheme is refused in the ack; a missing file is found
        // missing after it, and says so in an event.
        let ack = ctl
            .scale_actor(&a_id, "https://example.com/a.wasm", 1, None)
            .await
            .unwrap();
        assert!(!ack.accepted);
        assert!(ack.error.contains("https://"), "{}", ack.error);
        let ack = ctl
            .scale_actor(&a_id, "/no/such.wasm", 1, None)
            .await
            .unwrap();
        assert!(ack.accepted, "the file is read after the ack");
        next_event(&mut events, "actors_start_failed", |d| {
            d["image_ref"] == "/no/such.wasm"
        })
        .await;

        // get.claims: the actor's, under both of 0.82's names.
        assert!(
            until(SETTLE, || async {
                ctl.get_claims().await.unwrap().iter().any(|c| {
                    c.get("sub") == Some(&actor)
                        && c.get("subject") == Some(&actor)
                        && c.get("caps").is_some_and(|caps| caps.contains(KV))
                })
            })
            .await,
            "the actor's claims never reached get.claims"
        );

        // cmd.{host}.lp on B from a file:// reference.
        let ack = ctl
            .start_provider(
                &b_id,
                &provider_ref,
                None,
                None,
                Some(r#"{"mode":"echo"}"#.into()),
            )
            .await
            .unwrap();
        assert!(ack.accepted, "{ack:?}");
        let started = next_event(&mut events, "provider_started", |d| {
            d["public_key"] == provider.as_str()
        })
        .await;
        assert_eq!(started["data"]["link_name"], "default");
        assert_eq!(started["data"]["contract_id"], KV);
        let inventory = inventory_of(&ctl, &b_id).await;
        assert_eq!(inventory.providers.len(), 1);
        assert_eq!(inventory.providers[0].id, provider);
        assert_eq!(
            inventory.providers[0].image_ref.as_deref(),
            Some(provider_ref.as_str())
        );

        // linkdefs.put, get.links; the actor on A calls the provider on B.
        let values = HashMap::from([("bucket".to_owned(), "one".to_owned())]);
        let ack = ctl
            .advertise_link(&actor, &provider, KV, "default", values)
            .await
            .unwrap();
        assert!(ack.accepted, "{ack:?}");
        next_event(&mut events, "linkdef_set", |d| {
            d["actor_id"] == actor.as_str() && d["values"]["bucket"] == "one"
        })
        .await;
        let links = ctl.query_links().await.unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].provider_id, provider);
        assert!(
            until(SETTLE, || async {
                a.ctl(&hello_call(&actor).each_ref().map(String::as_str))
                    .status
                    .success()
            })
            .await,
            "the actor on A never reached the provider on B: {}\nA:\n{}\nB:\n{}",
            stderr(&a.ctl(&hello_call(&actor).each_ref().map(String::as_str))),
            a.log(),
            b.log()
        );
        let reply = a.ctl_ok(&hello_call(&actor).each_ref().map(String::as_str));
        assert!(reply.contains("fixture"), "{reply}");

        // linkdefs.del: gone from the lattice and from the route.
        let ack = ctl.remove_link(&actor, KV, "default").await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        next_event(&mut events, "linkdef_deleted", |d| {
            d["actor_id"] == actor.as_str()
        })
        .await;
        assert!(ctl.query_links().await.unwrap().is_empty());
        let err = a.ctl_err(&hello_call(&actor).each_ref().map(String::as_str));
        assert!(err.contains("no link"), "{err}");

        // labels.{host}.put|del, and auctions honouring them.
        let ack = ctl.put_label(&a_id, "tier", "gold").await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        let hosts = ctl.get_hosts().await.unwrap();
        let labels = hosts
            .iter()
            .find(|h| h.id == a_id)
            .unwrap()
            .labels
            .clone()
            .unwrap();
        assert_eq!(labels["tier"], "gold");
        let ack = ctl.put_label(&a_id, "hostcore.os", "plan9").await.unwrap();
        assert!(
            !ack.accepted && ack.error.contains("hostcore.os"),
            "{ack:?}"
        );
        let bids = ctl
            .perform_actor_auction(&actor_ref, HashMap::from([("tier".into(), "gold".into())]))
            .await
            .unwrap();
        assert_eq!(
            bids.iter().map(|b| b.host_id.as_str()).collect::<Vec<_>>(),
            [a_id.as_str()]
        );
        let bids = ctl
            .perform_actor_auction(&actor_ref, HashMap::from([("zone".into(), "b".into())]))
            .await
            .unwrap();
        assert_eq!(
            bids.iter().map(|b| b.host_id.as_str()).collect::<Vec<_>>(),
            [b_id.as_str()]
        );
        let ack = ctl.delete_label(&a_id, "tier").await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        let bids = ctl
            .perform_actor_auction(&actor_ref, HashMap::from([("tier".into(), "gold".into())]))
            .await
            .unwrap();
        assert!(bids.is_empty(), "{bids:?}");
        // B runs the provider already: only A bids.
        let bids = ctl
            .perform_provider_auction(&provider_ref, "default", HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            bids.iter().map(|b| b.host_id.as_str()).collect::<Vec<_>>(),
            [a_id.as_str()]
        );
        assert_eq!(bids[0].provider_ref, provider_ref);

        // registries.put (a publish) and config.*.
        ctl.put_registries(HashMap::from([(
            "ghcr.io".to_owned(),
            wasmcloud_control_interface::RegistryCredential {
                username: Some("u".into()),
                password: Some("p".into()),
                registry_type: "oci".into(),
                ..Default::default()
            },
        )]))
        .await
        .unwrap();
        let ack = ctl
            .put_config(&actor, "greeting", b"hi".to_vec())
            .await
            .unwrap();
        assert!(ack.accepted, "{ack:?}");
        next_event(&mut events, "config_set", |d| d["key"] == "greeting").await;
        let got = ctl.get_config(&actor, "greeting").await.unwrap();
        assert!(got.found);
        assert_eq!(got.data, b"hi");
        let all = ctl.get_all_config(&actor).await.unwrap();
        assert_eq!(all["greeting"], b"hi");
        let ack = ctl.delete_config_key(&actor, "greeting").await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        assert!(!ctl.get_config(&actor, "greeting").await.unwrap().found);

        // Bad payloads and subjects: refused with the reason, nothing crashes.
        let refused = raw_ctl(
            &nc,
            format!("wasmbus.ctl.{lattice}.cmd.{a_id}.scale"),
            "not json",
        )
        .await;
        assert_eq!(refused["accepted"], false);
        assert!(
            refused["error"].as_str().unwrap().contains("bad payload"),
            "{refused}"
        );
        let refused = raw_ctl(&nc, format!("wasmbus.ctl.{lattice}.cmd.{a_id}.zz"), "{}").await;
        assert_eq!(
            refused,
            serde_json::json!({"accepted": false, "error": "unsupported subject"})
        );
        let refused = raw_ctl(
            &nc,
            format!("wasmbus.ctl.{lattice}.linkdefs.put"),
            r#"{"actor_id":"x"}"#,
        )
        .await;
        assert_eq!(refused["accepted"], false, "{refused}");

        // The heartbeat carries the inventory; each running provider's
        // health comes with it.
        let beat = next_event(&mut events, "host_heartbeat", |_| true).await;
        assert!(beat["data"]["actors"].is_array(), "{beat}");
        let health = next_event(&mut events, "health_check_status", |d| {
            d["public_key"] == provider.as_str()
        })
        .await;
        assert_eq!(health["data"]["contract_id"], KV, "{health}");

        // cmd.{host}.sa, cmd.{host}.sp, cmd.{host}.stop.
        let ack = ctl.stop_actor(&a_id, &actor, None).await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        next_event(&mut events, "actors_stopped", |d| {
            d["public_key"] == actor.as_str()
        })
        .await;
        assert!(inventory_of(&ctl, &a_id).await.actors.is_empty());
        let ack = ctl.stop_actor(&a_id, &actor, None).await.unwrap();
        assert!(!ack.accepted && ack.error.contains("no actor"), "{ack:?}");
        let ack = ctl
            .stop_provider(&b_id, &provider, "default", KV, None)
            .await
            .unwrap();
        assert!(ack.accepted, "{ack:?}");
        let stopped = next_event(&mut events, "provider_stopped", |d| {
            d["public_key"] == provider.as_str()
        })
        .await;
        assert_eq!(stopped["data"]["contract_id"], KV, "{stopped}");
        assert_eq!(stopped["data"]["link_name"], "default", "{stopped}");
        let ack = ctl.stop_host(&b_id, None).await.unwrap();
        assert!(ack.accepted, "{ack:?}");
        let stopped = next_event(&mut events, "host_stopped", |_| true).await;
        assert_eq!(stopped["source"], b_id.as_str());
        let hosts = ctl.get_hosts().await.unwrap();
        assert_eq!(
            hosts.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            [a_id.as_str()]
        );
    });
    drop(b);
    drop(a);
}

#[test]
fn a_link_put_on_one_host_is_used_from_another_actors_call_across_hosts_and_a_killed_host_fails_calls_fast(
) {
    let nats = NatsServer::start("kill");
    let lattice = "kill";
    let seed = cluster_seed();
    let a = member(&nats, lattice, &seed, &["--invocation-timeout-ms", "10000"]);
    let b = member(&nats, lattice, &seed, &[]);
    let actor = a.start_actor(
        "hello.wasm",
        "hello",
        &["--cap", "wasmcloud:httpserver", "--cap", KV],
    );
    let (par, provider) = b.par("fixture", KV);
    b.ctl_ok(&[
        "start-provider",
        par.to_str().unwrap(),
        "--config",
        r#"{"mode":"echo"}"#,
    ]);
    // The link is put through B's own control socket; A's actor uses it.
    assert!(
        eventually(SETTLE, || b
            .ctl(&["link", "put", &actor, &provider, KV, "bucket=one"])
            .status
            .success()),
        "{}",
        stderr(&b.ctl(&["link", "put", &actor, &provider, KV]))
    );
    let call = || a.ctl(&hello_call(&actor).each_ref().map(String::as_str));
    assert!(
        eventually(SETTLE, || call().status.success()),
        "A's actor never reached B's provider: {}\nA:\n{}\nB:\n{}",
        stderr(&call()),
        a.log(),
        b.log()
    );
    assert!(stdout(&call()).contains("fixture"));
    // A lists the link too: it is the lattice's.
    let links = a.ctl_ok(&["link", "ls", "--json"]);
    assert!(links.contains(&provider), "{links}");
    // Actor to actor across hosts: a component on A forwards to echo on B.
    let component = a.start_actor("echo_component.wasm", "component", &[]);
    let echo = b.start_actor("echo.wasm", "echo", &[]);
    let forward =
        serde_json::json!({"target": echo, "operation": "Echo.Echo", "payload": [1, 2, 3]})
            .to_string();
    let forwarded = || a.ctl(&["call", &component, "Forward", &forward]);
    assert!(
        eventually(SETTLE, || forwarded().status.success()),
        "{}",
        stderr(&forwarded())
    );
    assert_eq!(stdout(&forwarded()), "\u{1}\u{2}\u{3}");

    // kill -9 of B, mid-traffic: A's calls fail at once with the cause,
    // not at the 10 s deadline.
    let b_pid = b.pid() as i32;
    let traffic = std::thread::spawn({
        let call_args = (actor.clone(), a.state_dir());
        move || {
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                let started = Instant::now();
                let mut command = std::process::Command::new(bin("host-core"));
                command
                    .arg("ctl")
                    .arg("--state-dir")
                    .arg(&call_args.1)
                    .args(hello_call(&call_args.0));
                let output = run(command);
                if !output.status.success() {
                    failures.push((started.elapsed(), stderr(&output)));
                }
            }
            failures
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failures = traffic.join().unwrap();
    assert!(!failures.is_empty(), "no call failed after B was killed");
    // A call in flight when B died waits for its deadline (nothing tells A
    // which host took it); every call after it fails at once.
    for (took, why) in failures.iter().skip(1) {
        assert!(
            *took < Duration::from_secs(2),
            "a call took {took:?} to fail: {why}"
        );
    }
    let started = Instant::now();
    let output = call();
    assert!(!output.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let why = stderr(&output);
    assert!(why.contains("no host of the lattice serves"), "{why}");
    runtime().block_on(async {
        let (_, ctl) = client(&nats, lattice).await;
        let hosts = ctl.get_hosts().await.unwrap();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        assert_eq!(hosts[0].id, host_id(&a));
    });
    drop(b);
}

/// The inodes of the TCP sockets (IPv4 and IPv6) open on this machine.
fn tcp_socket_inodes() -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                inodes.push(inode.to_owned());
            }
        }
    }
    inodes
}

/// The socket inodes process `pid` holds open.
fn socket_inodes_of(pid: i32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let text = target.to_string_lossy().into_owned();
            text.strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect()
}

/// The hello actor, the fixture provider and a link between them
/// (`bucket=one`), all on `host`, through its socket; the actor's key.
fn hello_linked_here(host: &TestHost) -> String {
    let actor = host.start_actor(
        "hello.wasm",
        "hello",
        &["--cap", "wasmcloud:httpserver", "--cap", KV],
    );
    let (par, provider) = host.par("fixture", KV);
    host.ctl_ok(&["start-provider", par.to_str().unwrap()]);
    host.ctl_ok(&["link", "put", &actor, &provider, KV, "bucket=one"]);
    actor
}

#[test]
fn a_host_without_nats_opens_no_network_connection() {
    let host = TestHost::start();
    let actor = hello_linked_here(&host);
    host.ctl_ok(&hello_call(&actor).each_ref().map(String::as_str));
    let tcp = tcp_socket_inodes();
    let pid = host.pid() as i32;
    let mut processes = vec![pid];
    processes.extend(all_descendants(pid));
    for process in processes {
        for inode in socket_inodes_of(process) {
            assert!(
                !tcp.contains(&inode),
                "process {process} of a host without --nats holds a TCP socket"
            );
        }
    }
}

#[test]
fn local_calls_never_need_nats_and_links_survive_a_nats_restart() {
    let mut nats = NatsServer::start("restart");
    let lattice = "restart";
    let host = member(&nats, lattice, &cluster_seed(), &[]);
    let actor = hello_linked_here(&host);
    let provider = host.inventory()["providers"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = || host.ctl(&hello_call(&actor).each_ref().map(String::as_str));
    assert!(call().status.success(), "{}", stderr(&call()));
    // The check of the test above sees this host's connection to NATS.
    let tcp = tcp_socket_inodes();
    assert!(
        socket_inodes_of(host.pid() as i32)
            .iter()
            .any(|inode| tcp.contains(inode)),
        "a host with --nats holds no TCP socket"
    );

    // NATS gone: the actor and provider of this host still talk.
    nats.kill();
    for _ in 0..20 {
        let output = call();
        assert!(
            output.status.success(),
            "a local call failed without NATS: {}",
            stderr(&output)
        );
    }

    // NATS back from its store: the link is still the lattice's.
    nats.restart();
    runtime().block_on(async {
        let (_, ctl) = client(&nats, lattice).await;
        assert!(
            until(SETTLE, || async {
                ctl.query_links().await.is_ok_and(|links| {
                    links.iter().any(|l| {
                        l.actor_id == actor
                            && l.values.get("bucket").map(String::as_str) == Some("one")
                    })
                })
            })
            .await,
            "the link was lost across the nats-server restart"
        );
        // The host answers the control interface again.
        assert!(
            until(SETTLE, || async {
                ctl.get_hosts().await.is_ok_and(|hosts| hosts.len() == 1)
            })
            .await,
            "the host never answered again after the restart:\n{}",
            host.log()
        );
    });
    assert!(call().status.success(), "{}", stderr(&call()));

    // `host-core ctl --nats` speaks the same interface.
    let url = nats.url();
    let listed = host_core_ok(
        &host.keys,
        &[
            "ctl",
            "--nats",
            &url,
            "--lattice",
            lattice,
            "hosts",
            "--json",
        ],
    );
    let hosts: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(hosts[0]["id"], host_id(&host), "{listed}");
    let links = host_core_ok(
        &host.keys,
        &["ctl", "--nats", &url, "--lattice", lattice, "link", "ls"],
    );
    assert!(links.contains(&provider), "{links}");
    let id = host_id(&host);
    let over_nats = |args: &[&str]| {
        let mut all = vec!["ctl", "--nats", &url, "--lattice", lattice, "--host", &id];
        all.extend_from_slice(args);
        host_core(&host.keys, &all)
    };
    let scaled = over_nats(&["scale-actor", &actor, "2"]);
    assert!(scaled.status.success(), "{}", stderr(&scaled));
    assert_eq!(stdout(&scaled), "accepted");
    assert!(
        eventually(SETTLE, || {
            let inventory = over_nats(&["inventory", "--json"]);
            let inventory: serde_json::Value = serde_json::from_str(&stdout(&inventory)).unwrap();
            inventory["actors"][0]["instances"][0]["max_instances"] == 2
        }),
        "the scale never showed in the inventory"
    );
    let refused = over_nats(&["stop-actor", "MNOSUCHACTOR"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("refused: no actor"),
        "{}",
        stderr(&refused)
    );
}

/// Sends `invocation` as a wasmCloud 0.82 host would, its payload chunked
/// through the object store when it is too large for one message; returns
/// the response with its payload de-chunked.
async fn invoke_as_wasmcloud(
    nc: &async_nats::Client,
    lattice_name: &str,
    mut invocation: lattice::rpc::Invocation,
) -> (lattice::rpc::InvocationResponse, Option<String>) {
    use tokio::io::AsyncReadExt;
    let js = async_nats::jetstream::new(nc.clone());
    let bucket = lattice::rpc::chunk_bucket(lattice_name);
    let store = match js.get_object_store(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(async_nats::jetstream::object_store::Config {
                bucket: bucket.clone(),
                ..Default::default()
            })
            .await
            .unwrap(),
    };
    if lattice::rpc::needs_chunking(invocation.msg.len()) {
        let mut body = invocation.msg.as_slice();
        store
            .put(
                lattice::rpc::chunk_object_name(&invocation.id).as_str(),
                &mut body,
            )
            .await
            .unwrap();
        invocation.msg = Vec::new();
    }
    let subject = lattice::subjects::rpc_actor(lattice_name, &invocation.target.public_key);
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        nc.request(subject, invocation.encode().unwrap().into()),
    )
    .await
    .expect("no answer within 20 s")
    .unwrap();
    let kind = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("x-error-kind"))
        .map(|v| v.to_string());
    let mut response = lattice::rpc::InvocationResponse::decode(&reply.payload).unwrap();
    if response.msg.is_empty() && response.content_length > 0 {
        let mut object = store
            .get(lattice::rpc::reply_chunk_object_name(&invocation.id).as_str())
            .await
            .unwrap();
        object.read_to_end(&mut response.msg).await.unwrap();
    }
    (response, kind)
}

#[test]
fn invocations_as_wasmcloud_sends_them_signed_checked_and_chunked() {
    let nats = NatsServer::start("rpc");
    let lattice_name = "rpc";
    let seed = cluster_seed();
    let host = member(&nats, lattice_name, &seed, &["--max-memory-mb", "64"]);
    let echo = host.start_actor("echo.wasm", "echo", &[]);
    let cluster = nkeys::KeyPair::from_seed(&seed).unwrap();
    let sender = nkeys::KeyPair::new_server().public_key();
    let caller = lattice::rpc::WasmCloudEntity::actor(&nkeys::KeyPair::new_module().public_key());
    let target = lattice::rpc::WasmCloudEntity::actor(&echo);
    let invocation = |key: &nkeys::KeyPair, body: Vec<u8>| {
        lattice::rpc::Invocation::new(
            key,
            &sender,
            caller.clone(),
            target.clone(),
            "Echo.Echo",
            body,
        )
        .unwrap()
    };
    runtime().block_on(async {
        let (nc, _) = client(&nats, lattice_name).await;
        // The subscription follows the actor's start.
        let subject = lattice::subjects::rpc_actor(lattice_name, &echo);
        assert!(
            until(SETTLE, || async {
                nc.request(subject.clone(), "".into()).await.is_ok()
            })
            .await,
            "no host serves {subject}"
        );

        let (response, _) =
            invoke_as_wasmcloud(&nc, lattice_name, invocation(&cluster, b"hi".to_vec())).await;
        assert_eq!(response.error, None);
        assert_eq!(response.msg, b"hi");

        // Signed by a key outside the cluster: refused, with its kind.
        let stranger = nkeys::KeyPair::new_cluster();
        let (response, kind) =
            invoke_as_wasmcloud(&nc, lattice_name, invocation(&stranger, b"hi".to_vec())).await;
        let error = response.error.expect("refused");
        assert!(error.contains("cluster issuers"), "{error}");
        assert_eq!(kind.as_deref(), Some("denied"));
        // A payload changed after signing: refused.
        let mut tampered = invocation(&cluster, b"hi".to_vec());
        tampered.msg = b"ho".to_vec();
        let (response, _) = invoke_as_wasmcloud(&nc, lattice_name, tampered).await;
        assert!(response.error.expect("refused").contains("hash"));

        // Over 900 KiB: through the object store both ways.
        let big: Vec<u8> = (0..lattice::rpc::CHUNK_THRESHOLD + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        let (response, _) =
            invoke_as_wasmcloud(&nc, lattice_name, invocation(&cluster, big.clone())).await;
        assert_eq!(response.error, None, "{:?}\n{}", response.error, host.log());
        assert_eq!(response.content_length, big.len() as u64);
        assert!(response.msg == big, "the chunked reply differs");
    });
}

#[test]
fn http_into_one_host_reaches_an_actor_on_another_that_counts_on_a_third() {
    let nats = NatsServer::start("three");
    let lattice_name = "three";
    let seed = cluster_seed();
    let files = temp_dir("three");
    prepare_demo(&files);
    let (a, b, c) = (
        member(&nats, lattice_name, &seed, &[]),
        member(&nats, lattice_name, &seed, &[]),
        member(&nats, lattice_name, &seed, &[]),
    );
    let file = |name: &str| files.join(name).to_str().unwrap().to_owned();
    let httpserver = a.ctl_ok(&["start-provider", &file("httpserver.par")]);
    let counter = b.ctl_ok(&["start-actor", &file("kvcounter.wasm")]);
    let keyvalue = c.ctl_ok(&["start-provider", &file("keyvalue.par")]);
    let port = free_port();
    runtime().block_on(async {
        let (_, ctl) = client(&nats, lattice_name).await;
        let address = HashMap::from([("address".to_owned(), format!("127.0.0.1:{port}"))]);
        for (provider, contract, values) in [
            (&keyvalue, KV, HashMap::new()),
            (&httpserver, "wasmcloud:httpserver", address),
        ] {
            let ack = ctl
                .advertise_link(&counter, provider, contract, "default", values)
                .await
                .unwrap();
            assert!(ack.accepted, "{ack:?}");
        }
    });
    let get = || http_get_within(port, "/a", Duration::from_secs(2));
    assert!(
        eventually(SETTLE, || get().is_some_and(|(status, _)| status == 200)),
        "no count through three hosts: {:?}\nA:\n{}\nB:\n{}\nC:\n{}",
        get(),
        a.log(),
        b.log(),
        c.log()
    );
    let count = |body: &str| -> i64 {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["counter"]
            .as_i64()
            .unwrap()
    };
    let (_, first) = http_get(port, "/a");
    let (_, second) = http_get(port, "/a");
    assert_eq!(count(&second), count(&first) + 1, "{first} {second}");
}
