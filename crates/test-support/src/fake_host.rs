//! A host's end that answers the provider's calls to actors with a handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{DuplexStream, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wire::provider::{Bootstrap, FromProvider, Link, ToProvider};
use wire::{Bytes, CallError, FrameWriter};

use crate::channel::{in_memory, InMemory};

/// A call the provider made to an actor.
#[derive(Debug, Clone)]
pub struct ActorCall {
    pub actor_id: String,
    pub operation: String,
    pub payload: Vec<u8>,
}

/// What the actor answers.
pub type Reply = Result<Vec<u8>, CallError>;

/// Answers an [`ActorCall`]. It is called on the task that reads the
/// channel, as each call arrives; the future it returns runs on a task of
/// its own, so calls overlap.
pub type Handler =
    Arc<dyn Fn(ActorCall) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(ActorCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    Arc::new(move |call| Box::pin(f(call)))
}

type Writer = Arc<tokio::sync::Mutex<FrameWriter<WriteHalf<DuplexStream>, ToProvider>>>;

/// A provider served in memory (`shim::serve`) behind a host that has sent
/// `Init` and seen `Ready`. It answers every `CallActor` with the handler,
/// forwards health answers to [`FakeHost::health`], ignores `CancelCall`
/// and takes any other message from the provider for a bug.
pub struct FakeHost<P> {
    to: Writer,
    health: mpsc::UnboundedReceiver<(u64, bool, String)>,
    serve: JoinHandle<Result<(), shim::ShimError>>,
    step: Duration,
    pub provider: Arc<P>,
    calls: Arc<Mutex<Vec<ActorCall>>>,
}

impl<P: shim::Provider> FakeHost<P> {
    /// Serves `provider`, sends `Init` with `links` and waits for `Ready`
    /// (each wait at most `step`).
    pub async fn start(
        provider: Arc<P>,
        bootstrap: Bootstrap,
        links: Vec<Link>,
        step: Duration,
        handler: Handler,
    ) -> Self {
        let InMemory {
            host,
            serve,
            provider,
        } = in_memory(provider, bootstrap);
        let mut host = host.with_step(step);
        host.init(links).await;
        let (to, mut from) = host.into_frames();
        let to: Writer = Arc::new(tokio::sync::Mutex::new(to));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (health_tx, health) = mpsc::unbounded_channel();
        let (writer, seen) = (to.clone(), calls.clone());
        tokio::spawn(async move {
            while let Ok(Some(msg)) = from.recv().await {
                match msg {
                    FromProvider::CallActor {
                        id,
                        actor_id,
                        operation,
                        payload,
                    } => {
                        let call = ActorCall {
                            actor_id,
                            operation,
                            payload: payload.into_vec(),
                        };
                        seen.lock().unwrap().push(call.clone());
                        let (reply, writer) = (handler(call), writer.clone());
                        tokio::spawn(async move {
                            let result = reply.await.map(Bytes::from);
                            let msg = ToProvider::CallActorResult { id, result };
                            let _ = writer.lock().await.send(&msg).await;
                        });
                    }
                    FromProvider::Health {
                        id,
                        healthy,
                        message,
                    } => {
                        let _ = health_tx.send((id, healthy, message));
                    }
                    // A client that hung up: the provider gives its call up.
                    FromProvider::CancelCall { .. } => {}
                    other => panic!("unexpected message from the provider: {other:?}"),
                }
            }
        });
        Self {
            to,
            health,
            serve,
            step,
            provider,
            calls,
        }
    }

    pub async fn send(&self, msg: ToProvider) {
        self.to.lock().await.send(&msg).await.unwrap();
    }

    /// A health check `id` and its answer: (healthy, message).
    pub async fn health(&mut self, id: u64) -> (bool, String) {
        self.send(ToProvider::HealthCheck { id }).await;
        let (got, healthy, message) = tokio::time::timeout(self.step, self.health.recv())
            .await
            .expect("health answer in time")
            .unwrap();
        assert_eq!(got, id);
        (healthy, message)
    }

    /// Every call the provider made to an actor so far, in arrival order.
    pub fn calls(&self) -> Vec<ActorCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Sends `Shutdown`; `serve` must end well within the step.
    pub async fn shutdown(self) {
        self.send(ToProvider::Shutdown).await;
        tokio::time::timeout(self.step, self.serve)
            .await
            .expect("serve ended in time")
            .unwrap()
            .unwrap();
    }
}
