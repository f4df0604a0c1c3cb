//! Drives `shim::serve` in memory, playing the host's side of the channel.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use shim::{Health, HostHandle, Link, Provider, ProviderError, ShimError};
use test_support::{in_memory, link_del, InMemory};
use tokio::sync::Notify;
use wire::provider::{Bootstrap, FromProvider, ToProvider};
use wire::Bytes;

const STEP: Duration = Duration::from_secs(10);
const ACTOR: &str = "Mactor";

#[derive(Default)]
struct TestProvider {
    events: Mutex<Vec<String>>,
    host: OnceLock<HostHandle>,
    release_slow: Notify,
    unhealthy: std::sync::atomic::AtomicBool,
}

impl TestProvider {
    fn log(&self, event: impl Into<String>) {
        self.events.lock().unwrap().push(event.into());
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    async fn invoke_async(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ProviderError> {
        match operation {
            "Test.Echo" => Ok(payload),
            "Test.Slow" => {
                self.release_slow.notified().await;
                Ok(b"slow".to_vec())
            }
            "Test.CallBack" => {
                let host = self.host.get().expect("init ran");
                host.call_actor(actor_id, "Actor.Handle", payload).await
            }
            "Test.Panic" => panic!("boom"),
            other => Err(ProviderError::new(format!("unknown operation {other}"))),
        }
    }
}

impl Provider for TestProvider {
    async fn init(&self, host: &HostHandle) -> Result<(), ProviderError> {
        self.log(format!("init {} {}", host.link_name(), host.config_json()));
        let _ = self.host.set(host.clone());
        Ok(())
    }

    async fn link_added(&self, link: Link) -> Result<(), ProviderError> {
        if link.actor_id.starts_with("slow") {
            // A slow link change must still be applied before later ones.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.log(format!("put {}", link.actor_id));
        if link.actor_id == "bad" {
            return Err("refused".into());
        }
        Ok(())
    }

    async fn link_removed(&self, actor_id: &str, _contract_id: &str, _link_name: &str) {
        self.log(format!("del {actor_id}"));
    }

    fn invoke(
        &self,
        actor_id: &str,
        operation: &str,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, ProviderError>> + Send {
        // Code before the returned future, as a provider may have.
        if operation == "Test.PanicEarly" {
            panic!("boom before the future");
        }
        self.invoke_async(actor_id, operation, payload)
    }

    async fn health(&self) -> Health {
        if self.unhealthy.load(std::sync::atomic::Ordering::SeqCst) {
            Health::unhealthy("sick")
        } else {
            Health::ok()
        }
    }

    async fn shutdown(&self) {
        self.log("shutdown");
    }
}

type FakeHost = InMemory<TestProvider>;

/// Serves a fresh provider in memory; nothing sent yet.
fn spawn() -> FakeHost {
    in_memory(Arc::new(TestProvider::default()), bootstrap()).with_step(STEP)
}

/// Spawns the provider, sends `Init` and waits for `Ready`.
async fn ready(links: Vec<Link>) -> FakeHost {
    let mut host = spawn();
    host.init(links).await;
    host
}

async fn finish(host: FakeHost) -> (Result<(), ShimError>, Vec<String>) {
    let provider = host.provider.clone();
    (host.finish().await, provider.events())
}

fn bootstrap() -> Bootstrap {
    test_support::bootstrap("Vprovider", "wasmcloud:test")
        .config_json(r#"{"mode":"test"}"#)
        .build()
}

fn link(actor: &str) -> Link {
    test_support::link(actor, "Vprovider", "wasmcloud:test")
        .value("k", "v")
        .build()
}

fn del(actor: &str) -> ToProvider {
    link_del(&link(actor))
}

fn invoke_result(msg: FromProvider) -> (u64, Result<Vec<u8>, String>) {
    match msg {
        FromProvider::InvokeResult { id, result } => {
            (id, result.map(|b| b.into_vec()).map_err(|e| e.message))
        }
        other => panic!("expected InvokeResult, got {other:?}"),
    }
}

#[tokio::test]
async fn init_then_initial_links_in_order_then_ready() {
    let mut host = ready(vec![link("slow-a"), link("bad"), link("c")]).await;
    // Ready comes only after init and every initial link_added (a failing one
    // included).
    assert_eq!(
        host.provider.events(),
        [
            r#"init default {"mode":"test"}"#,
            "put slow-a",
            "put bad",
            "put c"
        ]
    );
    host.close().await;
    host.finish().await.unwrap();
}

#[tokio::test]
async fn link_changes_apply_in_arrival_order() {
    let mut host = ready(vec![]).await;
    host.send(ToProvider::LinkPut(link("slow-1"))).await;
    host.send(del("slow-1")).await;
    host.send(ToProvider::LinkPut(link("slow-2"))).await;
    host.send(ToProvider::LinkPut(link("x"))).await;
    host.send(del("x")).await;
    host.send(del("slow-2")).await;
    host.send(ToProvider::Shutdown).await;
    let (result, events) = finish(host).await;
    result.unwrap();
    assert_eq!(
        &events[1..],
        [
            "put slow-1",
            "del slow-1",
            "put slow-2",
            "put x",
            "del x",
            "del slow-2",
            "shutdown"
        ]
    );
}

#[tokio::test]
async fn a_slow_invoke_does_not_block_a_fast_one() {
    let mut host = ready(vec![]).await;
    host.invoke(1, ACTOR, "Test.Slow", b"").await;
    // A slow link change does not hold up invocations either.
    host.send(ToProvider::LinkPut(link("slow-link"))).await;
    host.invoke(2, ACTOR, "Test.Echo", b"fast").await;
    assert_eq!(invoke_result(host.recv().await), (2, Ok(b"fast".to_vec())));
    host.provider.release_slow.notify_one();
    assert_eq!(invoke_result(host.recv().await), (1, Ok(b"slow".to_vec())));
}

#[tokio::test]
async fn invoke_errors_and_panics_are_answered() {
    let mut host = ready(vec![]).await;
    host.invoke(1, ACTOR, "Test.Nope", b"").await;
    let (id, result) = invoke_result(host.recv().await);
    assert_eq!(id, 1);
    assert_eq!(result.unwrap_err(), "unknown operation Test.Nope");
    host.invoke(2, ACTOR, "Test.Panic", b"").await;
    let (id, result) = invoke_result(host.recv().await);
    assert_eq!(id, 2);
    assert!(result.unwrap_err().contains("panicked"));
    // A panic before the provider's future exists is answered too: on an
    // idle channel that code runs on the task reading the channel.
    host.invoke(3, ACTOR, "Test.PanicEarly", b"").await;
    let (id, result) = invoke_result(host.recv().await);
    assert_eq!(id, 3);
    assert!(result.unwrap_err().contains("panicked"));
    // Still serving after both panics.
    host.invoke(4, ACTOR, "Test.Echo", b"ok").await;
    assert_eq!(invoke_result(host.recv().await), (4, Ok(b"ok".to_vec())));
}

#[tokio::test]
async fn call_actor_round_trips_correlated_by_id() {
    let mut host = ready(vec![]).await;
    host.invoke(10, ACTOR, "Test.CallBack", b"first").await;
    host.invoke(11, ACTOR, "Test.CallBack", b"second").await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        match host.recv().await {
            FromProvider::CallActor {
                id,
                actor_id,
                operation,
                payload,
            } => {
                assert_eq!(actor_id, "Mactor");
                assert_eq!(operation, "Actor.Handle");
                calls.push((id, payload.into_vec()));
            }
            other => panic!("expected CallActor, got {other:?}"),
        }
    }
    assert_ne!(calls[0].0, calls[1].0);
    // Answer in reverse order: one with a result, one with an actor error.
    for (id, payload) in calls.into_iter().rev() {
        let result = if payload == b"first" {
            Ok(Bytes::from(b"reply to first".to_vec()))
        } else {
            Err(wire::CallError::actor_fault("actor failed"))
        };
        host.send(ToProvider::CallActorResult { id, result }).await;
    }
    let mut results = vec![
        invoke_result(host.recv().await),
        invoke_result(host.recv().await),
    ];
    results.sort_by_key(|(id, _)| *id);
    assert_eq!(
        results,
        [
            (10, Ok(b"reply to first".to_vec())),
            (11, Err("actor failed".to_owned()))
        ]
    );
}

#[tokio::test]
async fn call_actor_fails_once_the_host_is_gone() {
    let mut host = ready(vec![]).await;
    let handle = host.provider.host.get().unwrap().clone();
    host.send(ToProvider::Shutdown).await;
    let (result, _) = finish(host).await;
    result.unwrap();
    let err = handle.call_actor("M", "X.Y", vec![]).await.unwrap_err();
    assert!(err.message().contains("closed"), "{err}");
}

#[tokio::test]
async fn health_checks_are_answered() {
    let mut host = ready(vec![]).await;
    host.send(ToProvider::HealthCheck { id: 5 }).await;
    match host.recv().await {
        FromProvider::Health { id, healthy, .. } => assert_eq!((id, healthy), (5, true)),
        other => panic!("expected Health, got {other:?}"),
    }
    host.provider
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    host.send(ToProvider::HealthCheck { id: 6 }).await;
    match host.recv().await {
        FromProvider::Health {
            id,
            healthy,
            message,
        } => assert_eq!((id, healthy, message.as_str()), (6, false, "sick")),
        other => panic!("expected Health, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_calls_the_provider_and_ends_serve() {
    let mut host = ready(vec![link("a")]).await;
    // An invocation still in flight does not hold up the shutdown.
    host.invoke(1, ACTOR, "Test.Slow", b"").await;
    host.send(ToProvider::Shutdown).await;
    let (result, events) = finish(host).await;
    result.unwrap();
    assert_eq!(events.last().unwrap(), "shutdown");
    assert_eq!(events.iter().filter(|e| *e == "shutdown").count(), 1);
}

#[tokio::test]
async fn end_of_stream_ends_serve_after_shutdown() {
    let mut host = ready(vec![]).await;
    // Only the sending side closes: the host's end still reads.
    host.close().await;
    let (result, events) = finish(host).await;
    result.unwrap();
    assert_eq!(events.last().unwrap(), "shutdown");
}

#[tokio::test]
async fn end_of_stream_before_init_ends_serve() {
    let mut host = spawn();
    host.close().await;
    host.finish().await.unwrap();
}

#[tokio::test]
async fn a_first_message_other_than_init_is_a_protocol_error() {
    let mut host = spawn();
    host.send(ToProvider::HealthCheck { id: 1 }).await;
    let (result, events) = finish(host).await;
    assert!(matches!(result, Err(ShimError::Protocol(_))), "{result:?}");
    assert!(!events.iter().any(|e| e.starts_with("init")));
}
