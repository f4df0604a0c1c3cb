//! Runs the real `fixture-provider` binary against a minimal fake host: the
//! bootstrap on stdin, the socket, the handshake and a few messages (the
//! whole `shim::run` path).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use test_support::{link_del, spawn_provider, Launched, SocketHostEnd, TempDir};
use tokio::process::Child;
use wire::provider::{Bootstrap, FromProvider, Link, ToProvider};
use wire::Bytes;

const STEP: Duration = Duration::from_secs(20);
const TOKEN: &str = "per-launch-secret";

fn temp_dir(tag: &str) -> TempDir {
    TempDir::new("fixture-provider-test", tag)
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_fixture-provider"))
}

fn bootstrap(socket: &Path, config_json: &str) -> Bootstrap {
    test_support::bootstrap("Vfixture", "wasmcloud:keyvalue")
        .socket(socket)
        .token(TOKEN)
        .config_json(config_json)
        .build()
}

/// The provider and the host's end of its channel, and the directory of
/// its socket.
struct Run {
    child: Child,
    host: SocketHostEnd,
    _dir: TempDir,
}

impl std::ops::Deref for Run {
    type Target = SocketHostEnd;

    fn deref(&self) -> &SocketHostEnd {
        &self.host
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut SocketHostEnd {
        &mut self.host
    }
}

async fn launch(config_json: &str, links: Vec<Link>) -> Run {
    launch_with(config_json, links, Stdio::inherit()).await
}

async fn launch_with(config_json: &str, links: Vec<Link>, stderr: Stdio) -> Run {
    let dir = temp_dir(&format!("{:x}", rand_tag(config_json)));
    let socket = dir.path().join("host.sock");
    let Launched { child, host } =
        test_support::launch(binary(), bootstrap(&socket, config_json), links, stderr).await;
    Run {
        child,
        host: host.with_step(STEP),
        _dir: dir,
    }
}

fn rand_tag(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish()
}

async fn wait_exit(child: &mut Child) -> Option<i32> {
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("provider exited in time")
        .unwrap();
    status.code()
}

fn link(actor: &str) -> Link {
    test_support::link(actor, "Vfixture", "wasmcloud:keyvalue")
        .value("answer", "42")
        .build()
}

#[derive(Deserialize, Debug, PartialEq)]
struct LinkInfo {
    actor_id: String,
    link_name: String,
    values: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug)]
struct GetResponse {
    value: String,
    exists: bool,
}

#[derive(Serialize)]
struct CallBack<'a> {
    actor: &'a str,
    operation: &'a str,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[tokio::test]
async fn serves_echo_links_keyvalue_and_callbacks_then_shuts_down() {
    let mut p = launch("", vec![link("Ma")]).await;
    assert_eq!(
        p.call_with_id(1, "Mactor", "Echo.Echo", b"hi".to_vec())
            .await
            .unwrap(),
        b"hi"
    );

    p.send(ToProvider::LinkPut(link("Mb"))).await;
    p.send(link_del(&link("Ma"))).await;
    // Link changes are applied in order but asynchronously: poll briefly.
    let mut links = Vec::new();
    for attempt in 0..50 {
        let bytes = p
            .call_with_id(100 + attempt, "Mactor", "Echo.Links", vec![])
            .await
            .unwrap();
        links = rmp_serde::from_slice::<Vec<LinkInfo>>(&bytes).unwrap();
        if links.len() == 1 && links[0].actor_id == "Mb" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        links,
        [LinkInfo {
            actor_id: "Mb".into(),
            link_name: "default".into(),
            values: BTreeMap::from([("answer".to_owned(), "42".to_owned())]),
        }]
    );

    let get = p
        .call_with_id(
            2,
            "Mactor",
            "KeyValue.Get",
            rmp_serde::to_vec("key").unwrap(),
        )
        .await
        .unwrap();
    let get: GetResponse = rmp_serde::from_slice(&get).unwrap();
    assert_eq!((get.value.as_str(), get.exists), ("fixture", true));

    assert_eq!(
        p.call_with_id(3, "Mactor", "Echo.Fail", vec![])
            .await
            .unwrap_err(),
        "fixture provider failure"
    );
    assert!(p
        .call_with_id(4, "Mactor", "Echo.Nope", vec![])
        .await
        .unwrap_err()
        .contains("Echo.Nope"));

    // Provider -> actor through the host.
    let req = rmp_serde::to_vec_named(&CallBack {
        actor: "Mtarget",
        operation: "Actor.Do",
        payload: b"ping".to_vec(),
    })
    .unwrap();
    p.send(ToProvider::Invoke {
        id: 5,
        actor_id: "Mactor".into(),
        operation: "Echo.CallBack".into(),
        payload: Bytes::from(req),
    })
    .await;
    let call_id = match p.recv().await {
        FromProvider::CallActor {
            id,
            actor_id,
            operation,
            payload,
        } => {
            assert_eq!(
                (actor_id.as_str(), operation.as_str(), &payload[..]),
                ("Mtarget", "Actor.Do", &b"ping"[..])
            );
            id
        }
        other => panic!("expected CallActor, got {other:?}"),
    };
    p.send(ToProvider::CallActorResult {
        id: call_id,
        result: Ok(Bytes::from(b"pong".to_vec())),
    })
    .await;
    match p.recv().await {
        FromProvider::InvokeResult { id: 5, result } => {
            assert_eq!(result.unwrap().into_vec(), b"pong")
        }
        other => panic!("expected InvokeResult 5, got {other:?}"),
    }

    p.send(ToProvider::HealthCheck { id: 6 }).await;
    assert!(matches!(
        p.recv().await,
        FromProvider::Health {
            id: 6,
            healthy: true,
            ..
        }
    ));

    p.send(ToProvider::Shutdown).await;
    assert_eq!(wait_exit(&mut p.child).await, Some(0));
}

#[tokio::test]
async fn unhealthy_config_and_exit_when_the_host_goes_away() {
    let mut p = launch(r#"{"mode":"echo","unhealthy":true}"#, vec![]).await;
    p.send(ToProvider::HealthCheck { id: 1 }).await;
    match p.recv().await {
        FromProvider::Health {
            id: 1,
            healthy: false,
            message,
        } => assert!(!message.is_empty()),
        other => panic!("expected unhealthy Health, got {other:?}"),
    }
    // The host's end closes: the provider exits cleanly.
    let Run {
        mut child,
        host,
        _dir,
    } = p;
    drop(host);
    assert_eq!(wait_exit(&mut child).await, Some(0));
}

#[tokio::test]
async fn crash_on_start_exits_3() {
    let dir = temp_dir("crash");
    let socket = dir.path().join("never.sock");
    let mut child = spawn_provider(
        binary(),
        &bootstrap(&socket, r#"{"crash_on_start":true}"#),
        Stdio::inherit(),
    );
    assert_eq!(wait_exit(&mut child).await, Some(3));
}

/// (process group, session) of `pid`, from `/proc/PID/stat`.
fn group_and_session(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn signal(sig: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn grandchildren_and_ignored_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut p = launch_with(
        r#"{"fork_grandchild":true,"escape_group":true,"ignore_sigterm":true}"#,
        vec![],
        Stdio::piped(),
    )
    .await;
    let provider_pid = p.child.id().unwrap();
    let mut lines = BufReader::new(p.child.stderr.take().unwrap()).lines();
    let (mut in_group, mut outside) = (None, None);
    while in_group.is_none() || outside.is_none() {
        let line = tokio::time::timeout(STEP, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("grandchild lines logged");
        let pid = |l: &str| -> u32 {
            let rest = &l[l.find("grandchild pid ").unwrap() + "grandchild pid ".len()..];
            rest.split(' ').next().unwrap().parse().unwrap()
        };
        if line.contains("in its process group") {
            in_group = Some(pid(&line));
        } else if line.contains("outside its process group") {
            outside = Some(pid(&line));
        }
    }
    let (in_group, outside) = (in_group.unwrap(), outside.unwrap());
    let (provider_group, _) = group_and_session(provider_pid);
    assert_eq!(group_and_session(in_group).0, provider_group);
    // `setsid` runs in the grandchild just after it is spawned: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while group_and_session(outside) != (outside, outside) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(group_and_session(outside), (outside, outside));

    // SIGTERM is ignored: the provider still answers.
    signal("-TERM", provider_pid);
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.send(ToProvider::HealthCheck { id: 1 }).await;
    assert!(matches!(p.recv().await, FromProvider::Health { id: 1, .. }));

    signal("-KILL", provider_pid);
    assert_eq!(wait_exit(&mut p.child).await, None);
    signal("-KILL", in_group);
    signal("-KILL", outside);
}
