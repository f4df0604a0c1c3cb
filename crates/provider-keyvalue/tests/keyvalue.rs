//! The keyvalue provider end to end: every operation through `shim::serve`
//! in memory (a fake host on `tokio::io::duplex`), concurrency straight on
//! the `Provider`, and durability with the real `keyvalue-provider` binary
//! killed with SIGKILL.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use provider_keyvalue::protocol::*;
use provider_keyvalue::KeyValueProvider;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shim::{Provider, ShimError};
use test_support::{in_memory, link_del, HostEnd, Launched, MemHostEnd, TempDir};
use tokio::process::Child;
use tokio::task::JoinHandle;
use wire::provider::{Bootstrap, Link, ToProvider};

const STEP: Duration = Duration::from_secs(20);
const TOKEN: &str = "per-launch-secret";

fn temp_dir(tag: &str) -> TempDir {
    TempDir::new("provider-kv-test", tag)
}

fn bootstrap(socket: &Path, data_dir: &Path, config_json: &str) -> Bootstrap {
    test_support::bootstrap("Vkeyvalue", "wasmcloud:keyvalue")
        .socket(socket)
        .token(TOKEN)
        .config_json(config_json)
        .data_dir(data_dir)
        .build()
}

fn link(actor: &str, bucket: Option<&str>) -> Link {
    let link = test_support::link(actor, "Vkeyvalue", "wasmcloud:keyvalue");
    match bucket {
        Some(bucket) => link.value("bucket", bucket),
        None => link,
    }
    .build()
}

fn mp<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

fn un<T: DeserializeOwned>(bytes: &[u8]) -> T {
    rmp_serde::from_slice(bytes).unwrap()
}

/// The keyvalue operations over the host's end of a provider channel, in
/// memory or over a socket.
trait KeyValueHost {
    /// `call` that must succeed, decoding the answer.
    async fn ok<T: DeserializeOwned>(&mut self, actor: &str, op: &str, payload: Vec<u8>) -> T;
    async fn set(&mut self, actor: &str, key: &str, value: &str, expires: u32);
    async fn get(&mut self, actor: &str, key: &str) -> GetResponse;
}

impl<R, W> KeyValueHost for HostEnd<R, W>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    async fn ok<T: DeserializeOwned>(&mut self, actor: &str, op: &str, payload: Vec<u8>) -> T {
        let bytes = self
            .call(actor, op, payload)
            .await
            .unwrap_or_else(|e| panic!("{op} failed: {e}"));
        un(&bytes)
    }

    async fn set(&mut self, actor: &str, key: &str, value: &str, expires: u32) {
        let req = SetRequest {
            key: key.into(),
            value: value.into(),
            expires,
        };
        let reply = self.call(actor, "KeyValue.Set", mp(&req)).await.unwrap();
        assert!(reply.is_empty(), "Set answers an empty message");
    }

    async fn get(&mut self, actor: &str, key: &str) -> GetResponse {
        self.ok(actor, "KeyValue.Get", mp(key)).await
    }
}

/// A provider served by `shim::serve` on an in-memory pipe.
struct InMemory {
    host: MemHostEnd,
    serve: JoinHandle<Result<(), ShimError>>,
    dir: TempDir,
}

impl InMemory {
    async fn start(tag: &str, config_json: &str, links: Vec<Link>) -> Self {
        let dir = temp_dir(tag);
        let boot = bootstrap(Path::new("unused"), dir.path(), config_json);
        let test_support::InMemory {
            mut host, serve, ..
        } = in_memory(Arc::new(KeyValueProvider::new()), boot);
        host.init(links).await;
        Self { host, serve, dir }
    }

    async fn stop(mut self) {
        self.host.send(ToProvider::Shutdown).await;
        tokio::time::timeout(STEP, self.serve)
            .await
            .expect("provider stopped in time")
            .unwrap()
            .unwrap();
        drop(self.dir);
    }
}

const A: &str = "Mactor";

#[tokio::test]
async fn strings_get_set_del_contains_increment() {
    let mut p = InMemory::start("strings", "", vec![link(A, None)]).await;
    let h = &mut p.host;
    assert!(p.dir.path().join("keyvalue.redb").is_file());
    assert_eq!(h.health().await, (true, String::new()));

    assert_eq!(
        h.get(A, "k").await,
        GetResponse {
            value: String::new(),
            exists: false
        }
    );
    assert!(!h.ok::<bool>(A, "KeyValue.Contains", mp("k")).await);
    h.set(A, "k", "v1", 0).await;
    assert_eq!(
        h.get(A, "k").await,
        GetResponse {
            value: "v1".into(),
            exists: true
        }
    );
    assert!(h.ok::<bool>(A, "KeyValue.Contains", mp("k")).await);
    h.set(A, "k", "v2", 0).await;
    assert_eq!(h.get(A, "k").await.value, "v2");
    assert!(h.ok::<bool>(A, "KeyValue.Del", mp("k")).await);
    assert!(!h.ok::<bool>(A, "KeyValue.Del", mp("k")).await);
    assert!(!h.get(A, "k").await.exists);

    let inc = |key: &str, value| {
        mp(&IncrementRequest {
            key: key.into(),
            value,
        })
    };
    assert_eq!(h.ok::<i32>(A, "KeyValue.Increment", inc("n", 5)).await, 5);
    assert_eq!(h.ok::<i32>(A, "KeyValue.Increment", inc("n", -7)).await, -2);
    assert_eq!(h.get(A, "n").await.value, "-2");
    h.set(A, "m", "41", 0).await;
    assert_eq!(h.ok::<i32>(A, "KeyValue.Increment", inc("m", 1)).await, 42);

    // A non-integer value cannot be incremented, and stays as it was.
    h.set(A, "word", "hello", 0).await;
    let err = h
        .call(A, "KeyValue.Increment", inc("word", 1))
        .await
        .unwrap_err();
    assert!(
        err.contains("KeyValue.Increment") && err.contains("not an integer"),
        "{err}"
    );
    assert_eq!(h.get(A, "word").await.value, "hello");
    h.set(A, "big", &i32::MAX.to_string(), 0).await;
    let err = h
        .call(A, "KeyValue.Increment", inc("big", 1))
        .await
        .unwrap_err();
    assert!(err.contains("overflows"), "{err}");

    // The payload shape the kvcounter fixture writes by hand: a fixmap
    // {"key": "counter:/", "value": 1}.
    let mut raw = vec![0x82, 0xa3];
    raw.extend_from_slice(b"key");
    raw.push(0xa9);
    raw.extend_from_slice(b"counter:/");
    raw.push(0xa5);
    raw.extend_from_slice(b"value");
    raw.push(0x01);
    assert_eq!(h.ok::<i32>(A, "KeyValue.Increment", raw.clone()).await, 1);
    assert_eq!(h.ok::<i32>(A, "KeyValue.Increment", raw).await, 2);
    p.stop().await;
}

#[tokio::test]
async fn lists() {
    let mut p = InMemory::start("lists", "", vec![]).await;
    let h = &mut p.host;
    let add = |v: &str| {
        mp(&ListAddRequest {
            list_name: "l".into(),
            value: v.into(),
        })
    };
    let range = |start, stop| {
        mp(&ListRangeRequest {
            list_name: "l".into(),
            start,
            stop,
        })
    };
    for (i, v) in ["a", "b", "c", "b", "d"].iter().enumerate() {
        assert_eq!(
            h.ok::<u32>(A, "KeyValue.ListAdd", add(v)).await,
            i as u32 + 1
        );
    }
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.ListRange", range(0, -1))
            .await,
        ["a", "b", "c", "b", "d"]
    );
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.ListRange", range(1, 2))
            .await,
        ["b", "c"]
    );
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.ListRange", range(-2, -1))
            .await,
        ["b", "d"]
    );
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.ListRange", range(3, 100))
            .await,
        ["b", "d"]
    );
    assert!(h
        .ok::<Vec<String>>(A, "KeyValue.ListRange", range(3, 1))
        .await
        .is_empty());

    // ListDel removes the first occurrence only.
    let del = |v: &str| {
        mp(&ListDelRequest {
            list_name: "l".into(),
            value: v.into(),
        })
    };
    assert!(h.ok::<bool>(A, "KeyValue.ListDel", del("b")).await);
    assert!(!h.ok::<bool>(A, "KeyValue.ListDel", del("zz")).await);
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.ListRange", range(0, -1))
            .await,
        ["a", "c", "b", "d"]
    );
    assert!(h.ok::<bool>(A, "KeyValue.Contains", mp("l")).await);
    assert!(h.ok::<bool>(A, "KeyValue.ListClear", mp("l")).await);
    assert!(!h.ok::<bool>(A, "KeyValue.ListClear", mp("l")).await);
    assert!(h
        .ok::<Vec<String>>(A, "KeyValue.ListRange", range(0, -1))
        .await
        .is_empty());
    assert!(!h.ok::<bool>(A, "KeyValue.Contains", mp("l")).await);

    // A key holds one type.
    h.set(A, "s", "string", 0).await;
    let err = h
        .call(
            A,
            "KeyValue.ListAdd",
            mp(&ListAddRequest {
                list_name: "s".into(),
                value: "x".into(),
            }),
        )
        .await
        .unwrap_err();
    assert!(err.contains("wrong type"), "{err}");
    p.stop().await;
}

#[tokio::test]
async fn sets() {
    let mut p = InMemory::start("sets", "", vec![]).await;
    let h = &mut p.host;
    let add = |set: &str, v: &str| {
        mp(&SetAddRequest {
            set_name: set.into(),
            value: v.into(),
        })
    };
    let del = |set: &str, v: &str| {
        mp(&SetDelRequest {
            set_name: set.into(),
            value: v.into(),
        })
    };
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s1", "a")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s1", "a")).await, 0);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s1", "b")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s1", "c")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s2", "b")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s2", "c")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetAdd", add("s2", "d")).await, 1);
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.SetQuery", mp("s1")).await,
        ["a", "b", "c"]
    );
    assert!(h
        .ok::<Vec<String>>(A, "KeyValue.SetQuery", mp("none"))
        .await
        .is_empty());
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.SetUnion", mp(&["s1", "s2"]))
            .await,
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.SetIntersection", mp(&["s1", "s2"]))
            .await,
        ["b", "c"]
    );
    assert!(h
        .ok::<Vec<String>>(A, "KeyValue.SetIntersection", mp(&["s1", "none"]))
        .await
        .is_empty());
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetDel", del("s1", "a")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetDel", del("s1", "a")).await, 0);
    assert_eq!(
        h.ok::<Vec<String>>(A, "KeyValue.SetQuery", mp("s1")).await,
        ["b", "c"]
    );
    assert!(h.ok::<bool>(A, "KeyValue.SetClear", mp("s1")).await);
    assert!(!h.ok::<bool>(A, "KeyValue.SetClear", mp("s1")).await);
    assert!(h
        .ok::<Vec<String>>(A, "KeyValue.SetQuery", mp("s1"))
        .await
        .is_empty());
    // Removing the last member removes the set.
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetDel", del("s2", "b")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetDel", del("s2", "c")).await, 1);
    assert_eq!(h.ok::<u32>(A, "KeyValue.SetDel", del("s2", "d")).await, 1);
    assert!(!h.ok::<bool>(A, "KeyValue.Contains", mp("s2")).await);
    // Get on a set is a type error.
    h.ok::<u32>(A, "KeyValue.SetAdd", add("s3", "x")).await;
    let err = h.call(A, "KeyValue.Get", mp("s3")).await.unwrap_err();
    assert!(err.contains("wrong type"), "{err}");
    p.stop().await;
}

#[tokio::test]
async fn expiry_is_honoured_on_read() {
    let mut p = InMemory::start("expiry", "", vec![]).await;
    let h = &mut p.host;
    h.set(A, "short", "soon gone", 1).await;
    h.set(A, "forever", "stays", 0).await;
    assert!(h.get(A, "short").await.exists);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        h.get(A, "short").await,
        GetResponse {
            value: String::new(),
            exists: false
        }
    );
    assert!(!h.ok::<bool>(A, "KeyValue.Contains", mp("short")).await);
    assert!(!h.ok::<bool>(A, "KeyValue.Del", mp("short")).await);
    assert!(h.get(A, "forever").await.exists);
    // An expired counter starts again from zero.
    h.set(A, "c", "10", 1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let inc = mp(&IncrementRequest {
        key: "c".into(),
        value: 3,
    });
    assert_eq!(h.ok::<i32>(A, "KeyValue.Increment", inc).await, 3);
    // Setting again without expiry clears it.
    h.set(A, "short", "back", 1).await;
    h.set(A, "short", "back", 0).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(h.get(A, "short").await.exists);
    p.stop().await;
}

#[tokio::test]
async fn errors_name_the_operation() {
    let mut p = InMemory::start("errors", "", vec![]).await;
    let h = &mut p.host;
    let err = h.call(A, "KeyValue.Nope", mp("k")).await.unwrap_err();
    assert!(err.contains("unknown operation KeyValue.Nope"), "{err}");
    let err = h.call(A, "Other.Get", mp("k")).await.unwrap_err();
    assert!(err.contains("Other.Get"), "{err}");
    // Not MessagePack at all, and the wrong shape.
    let err = h.call(A, "KeyValue.Get", vec![0xc1]).await.unwrap_err();
    assert!(err.starts_with("KeyValue.Get: malformed payload"), "{err}");
    let err = h
        .call(A, "KeyValue.Set", mp("just a string"))
        .await
        .unwrap_err();
    assert!(err.starts_with("KeyValue.Set: malformed payload"), "{err}");
    assert!(err.contains("SetRequest"), "{err}");
    let err = h
        .call(
            A,
            "KeyValue.Increment",
            mp(&BTreeMap::from([("key", "k"), ("value", "one")])),
        )
        .await
        .unwrap_err();
    assert!(
        err.starts_with("KeyValue.Increment: malformed payload"),
        "{err}"
    );
    let err = h.call(A, "KeyValue.SetUnion", mp("s1")).await.unwrap_err();
    assert!(
        err.starts_with("KeyValue.SetUnion: malformed payload"),
        "{err}"
    );
    let err = h.call(A, "KeyValue.ListRange", vec![]).await.unwrap_err();
    assert!(
        err.starts_with("KeyValue.ListRange: malformed payload"),
        "{err}"
    );
    // The provider is still fine.
    h.set(A, "k", "v", 0).await;
    assert_eq!(h.get(A, "k").await.value, "v");
    p.stop().await;
}

#[tokio::test]
async fn buckets_separate_actors_and_unbucketed_actors_share() {
    let links = vec![
        link("Mred", Some("red")),
        link("Mblue", Some("blue")),
        link("Mshared1", None),
        link("Mshared2", None),
    ];
    let mut p = InMemory::start("buckets", "", links).await;
    let h = &mut p.host;
    h.set("Mred", "k", "red value", 0).await;
    h.set("Mblue", "k", "blue value", 0).await;
    h.set("Mshared1", "k", "shared value", 0).await;
    assert_eq!(h.get("Mred", "k").await.value, "red value");
    assert_eq!(h.get("Mblue", "k").await.value, "blue value");
    assert_eq!(h.get("Mshared1", "k").await.value, "shared value");
    assert_eq!(h.get("Mshared2", "k").await.value, "shared value");
    // Sets and lists are namespaced too.
    let add = mp(&SetAddRequest {
        set_name: "s".into(),
        value: "x".into(),
    });
    h.ok::<u32>("Mred", "KeyValue.SetAdd", add).await;
    assert!(h
        .ok::<Vec<String>>("Mblue", "KeyValue.SetQuery", mp("s"))
        .await
        .is_empty());
    assert!(h.ok::<bool>("Mblue", "KeyValue.Del", mp("k")).await);
    assert_eq!(h.get("Mred", "k").await.value, "red value");

    // A second actor linked with the same bucket sees the same keys.
    h.send(ToProvider::LinkPut(link("Mred2", Some("red"))))
        .await;
    // Once the link is gone, an actor falls back to the shared namespace.
    h.send(link_del(&link("Mred", None))).await;
    // Link changes are applied asynchronously, in order: poll.
    let mut seen = (String::new(), String::new());
    for _ in 0..100 {
        seen = (
            h.get("Mred2", "k").await.value,
            h.get("Mred", "k").await.value,
        );
        if seen == ("red value".into(), "shared value".into()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, ("red value".into(), "shared value".into()));
    p.stop().await;
}

#[tokio::test]
async fn config_path_overrides_the_database_location() {
    let mut p = InMemory::start("config", r#"{"path": "sub/custom.redb"}"#, vec![]).await;
    p.host.set(A, "k", "v", 0).await;
    assert!(p.dir.path().join("sub/custom.redb").is_file());
    assert!(!p.dir.path().join("keyvalue.redb").exists());
    p.stop().await;

    // Unknown config fields are refused: init fails, no Ready.
    let dir = temp_dir("config-bad");
    let boot = bootstrap(Path::new("unused"), dir.path(), r#"{"pth": "x"}"#);
    let mut bad = in_memory(Arc::new(KeyValueProvider::new()), boot);
    bad.send(ToProvider::Init { links: vec![] }).await;
    let err = bad.finish().await;
    assert!(err.unwrap_err().to_string().contains("pth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_sum_correctly() {
    let dir = temp_dir("concurrent");
    let provider = Arc::new(KeyValueProvider::open(&dir.path().join("kv.redb")).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let provider = provider.clone();
            tokio::spawn(async move {
                let req = mp(&IncrementRequest {
                    key: "counter".into(),
                    value: 1,
                });
                // Half the actors share the namespace of the other half
                // (no links): all hit the same key.
                let actor = format!("Mactor{}", i % 20);
                let reply = provider
                    .invoke(&actor, "KeyValue.Increment", req)
                    .await
                    .unwrap();
                un::<i32>(&reply)
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    // Every increment saw a distinct value: none was lost or doubled.
    assert_eq!(seen, (1..=200).collect::<Vec<i32>>());
    let got: GetResponse = un(&provider
        .invoke(A, "KeyValue.Get", mp("counter"))
        .await
        .unwrap());
    assert_eq!(got.value, "200");
    assert!(provider.health().await.healthy);
    provider.shutdown().await;
    assert!(!provider.health().await.healthy);
    let err = provider
        .invoke(A, "KeyValue.Get", mp("counter"))
        .await
        .unwrap_err();
    assert!(err.message().contains("closed"), "{err}");
}

// --- the real binary -------------------------------------------------------

/// Starts `keyvalue-provider` with `data_dir`, plays the host's side of the
/// handshake and `Init`, and waits for `Ready`.
async fn launch(sock_dir: &Path, data_dir: &Path, tag: &str) -> Launched {
    let socket = sock_dir.join(format!("{tag}.sock"));
    test_support::launch(
        Path::new(env!("CARGO_BIN_EXE_keyvalue-provider")),
        bootstrap(&socket, data_dir, ""),
        vec![link("Mbucketed", Some("b1"))],
        Stdio::inherit(),
    )
    .await
}

async fn kill9(child: &mut Child) {
    child.start_kill().unwrap(); // SIGKILL
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("provider died in time")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = temp_dir("durable");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();

    let mut p = launch(dir.path(), &data_dir, "first").await;
    assert!(p.host.health().await.0);
    p.host.set(A, "durable", "acked before the kill", 0).await;
    p.host.set("Mbucketed", "durable", "in bucket b1", 0).await;
    let inc = mp(&IncrementRequest {
        key: "count".into(),
        value: 7,
    });
    assert_eq!(p.host.ok::<i32>(A, "KeyValue.Increment", inc).await, 7);
    let add = mp(&ListAddRequest {
        list_name: "l".into(),
        value: "item".into(),
    });
    assert_eq!(p.host.ok::<u32>(A, "KeyValue.ListAdd", add).await, 1);
    // The last answer is in; kill the process at once, no shutdown.
    kill9(&mut p.child).await;
    drop(p);

    let mut p = launch(dir.path(), &data_dir, "second").await;
    assert_eq!(
        p.host.get(A, "durable").await,
        GetResponse {
            value: "acked before the kill".into(),
            exists: true
        }
    );
    assert_eq!(
        p.host.get("Mbucketed", "durable").await.value,
        "in bucket b1"
    );
    assert_eq!(p.host.get(A, "count").await.value, "7");
    let range = mp(&ListRangeRequest {
        list_name: "l".into(),
        start: 0,
        stop: -1,
    });
    assert_eq!(
        p.host
            .ok::<Vec<String>>(A, "KeyValue.ListRange", range)
            .await,
        ["item"]
    );
    // A clean shutdown exits 0.
    p.host.send(ToProvider::Shutdown).await;
    let status = tokio::time::timeout(STEP, p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
