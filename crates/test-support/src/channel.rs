//! The host's end of a provider channel, driven by hand.

use std::sync::Arc;
use std::time::Duration;

use shim::{Provider, ShimError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use wire::provider::{Bootstrap, FromProvider, Link, ToProvider};
use wire::{Bytes, FrameReader, FrameWriter};

/// How long a step (an answer, a provider's exit) may take unless a test
/// says otherwise ([`HostEnd::with_step`]).
pub const DEFAULT_STEP: Duration = Duration::from_secs(20);

/// What the host sends a provider and what it reads back, one message at a
/// time; every wait is bounded by the step.
pub struct HostEnd<R, W> {
    /// `None` once [`HostEnd::close`]d.
    to: Option<FrameWriter<W, ToProvider>>,
    from: FrameReader<R, FromProvider>,
    next_id: u64,
    step: Duration,
}

/// The host's end of an in-memory channel.
pub type MemHostEnd = HostEnd<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

impl<R, W> HostEnd<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub fn new(reader: R, writer: W) -> Self {
        Self {
            to: Some(FrameWriter::new(writer)),
            from: FrameReader::new(reader),
            next_id: 0,
            step: DEFAULT_STEP,
        }
    }

    /// Waits of at most `step` from now on.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    pub async fn send(&mut self, msg: ToProvider) {
        let to = self.to.as_mut().expect("the host's end is open");
        to.send(&msg).await.unwrap();
    }

    /// The provider's next message.
    pub async fn recv(&mut self) -> FromProvider {
        tokio::time::timeout(self.step, self.from.recv())
            .await
            .expect("provider answered in time")
            .unwrap()
            .expect("provider channel open")
    }

    /// Sends `Init` with `links` and waits for `Ready`.
    pub async fn init(&mut self, links: Vec<Link>) {
        self.send(ToProvider::Init { links }).await;
        assert!(matches!(self.recv().await, FromProvider::Ready));
    }

    /// Sends `Invoke` `id` from `actor_id`; the answer is the caller's to read.
    pub async fn invoke(
        &mut self,
        id: u64,
        actor_id: &str,
        operation: &str,
        payload: impl AsRef<[u8]>,
    ) {
        self.send(ToProvider::Invoke {
            id,
            actor_id: actor_id.into(),
            operation: operation.into(),
            payload: Bytes::from(payload.as_ref().to_vec()),
        })
        .await;
    }

    /// `Invoke` `id` and its `InvokeResult`, which must come next: the
    /// reply, or the error's message.
    pub async fn call_with_id(
        &mut self,
        id: u64,
        actor_id: &str,
        operation: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<Vec<u8>, String> {
        self.invoke(id, actor_id, operation, payload).await;
        match self.recv().await {
            FromProvider::InvokeResult { id: got, result } => {
                assert_eq!(got, id);
                result.map(|b| b.into_vec()).map_err(|e| e.message)
            }
            other => panic!("expected InvokeResult, got {other:?}"),
        }
    }

    /// [`Self::call_with_id`] with the next id of this channel.
    pub async fn call(
        &mut self,
        actor_id: &str,
        operation: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<Vec<u8>, String> {
        let id = self.next_id();
        self.call_with_id(id, actor_id, operation, payload).await
    }

    /// A health check with the next id, and its answer: (healthy, message).
    pub async fn health(&mut self) -> (bool, String) {
        let id = self.next_id();
        self.send(ToProvider::HealthCheck { id }).await;
        match self.recv().await {
            FromProvider::Health {
                id: got,
                healthy,
                message,
            } => {
                assert_eq!(got, id);
                (healthy, message)
            }
            other => panic!("expected Health, got {other:?}"),
        }
    }

    /// Closes the host's sending side: the provider reads the end of the
    /// stream. Its answers can still be read.
    pub async fn close(&mut self) {
        if let Some(to) = self.to.take() {
            to.into_inner().shutdown().await.unwrap();
        }
    }

    /// The two framed halves, for a test that drives them itself.
    pub fn into_frames(self) -> (FrameWriter<W, ToProvider>, FrameReader<R, FromProvider>) {
        (self.to.expect("the host's end is open"), self.from)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// A provider served by `shim::serve` on an in-memory pipe, with the host's
/// end of it ([`HostEnd`], which it dereferences to).
pub struct InMemory<P> {
    pub host: MemHostEnd,
    pub serve: JoinHandle<Result<(), ShimError>>,
    pub provider: Arc<P>,
}

/// Serves `provider` with `bootstrap` on an in-memory pipe. Nothing is sent
/// yet: [`HostEnd::init`] starts it.
pub fn in_memory<P: Provider>(provider: Arc<P>, bootstrap: Bootstrap) -> InMemory<P> {
    let (host_end, provider_end) = tokio::io::duplex(256 * 1024);
    let (host_r, host_w) = split(host_end);
    let (prov_r, prov_w) = split(provider_end);
    let serve = tokio::spawn(shim::serve(provider.clone(), bootstrap, prov_r, prov_w));
    InMemory {
        host: HostEnd::new(host_r, host_w),
        serve,
        provider,
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "an in-memory pipe, not a socket: nothing to register"
)]
fn split(stream: DuplexStream) -> (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    tokio::io::split(stream)
}

impl<P> InMemory<P> {
    /// Waits of at most `step` from now on.
    pub fn with_step(mut self, step: Duration) -> Self {
        self.host = self.host.with_step(step);
        self
    }

    /// How `serve` ended, within the step.
    pub async fn finish(self) -> Result<(), ShimError> {
        tokio::time::timeout(self.host.step, self.serve)
            .await
            .expect("serve ended in time")
            .expect("serve did not panic")
    }
}

impl<P> std::ops::Deref for InMemory<P> {
    type Target = MemHostEnd;

    fn deref(&self) -> &MemHostEnd {
        &self.host
    }
}

impl<P> std::ops::DerefMut for InMemory<P> {
    fn deref_mut(&mut self) -> &mut MemHostEnd {
        &mut self.host
    }
}
