//! One writer task per channel: every task with something to send puts it
//! in a queue, and [`pump`] encodes what queued up and writes it together,
//! so a busy channel makes one write per burst rather than one per message.

use std::future::Future;

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use crate::{FrameWriter, WireError};

/// A batch stops growing here: enough to amortise the syscall, small enough
/// to keep the first frame's latency.
const BATCH_BYTES: usize = 64 * 1024;

/// The receiving end of a queue of outgoing messages: tokio's bounded or
/// unbounded mpsc receiver.
pub trait Outbox<T>: Send {
    /// The next message, waiting for it; `None` once every sender is gone.
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send;
    /// A message already queued, without waiting.
    fn ready(&mut self) -> Option<T>;
}

impl<T: Send> Outbox<T> for mpsc::Receiver<T> {
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.recv()
    }
    fn ready(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T: Send> Outbox<T> for mpsc::UnboundedReceiver<T> {
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.recv()
    }
    fn ready(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// Writes every message from `outbox` to `writer` until the outbox closes
/// (`Ok`) or the channel fails.
///
/// Under load, after the first message of a batch the task yields once, so
/// the tasks woken with it (other calls finishing on this thread) can queue
/// their messages before the write: a batch then carries many frames, and
/// the peer wakes once for all of them. A lone message should not wait for
/// that pass of the scheduler (it costs a lone call about 10 us here), so
/// the pump yields while recent batches held more than one frame, and
/// otherwise only once every [`PROBE_EVERY`] batches, to notice load.
pub async fn pump<W, T, Q>(mut writer: FrameWriter<W, T>, mut outbox: Q) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: serde::Serialize,
    Q: Outbox<T>,
{
    let mut busy_for = 0u32;
    let mut batches = 0u32;
    while let Some(msg) = outbox.next().await {
        writer.feed(&msg)?;
        drop(msg);
        batches = batches.wrapping_add(1);
        if busy_for > 0 || batches.is_multiple_of(PROBE_EVERY) {
            tokio::task::yield_now().await;
        }
        let mut frames = 1;
        while writer.buffered() < BATCH_BYTES {
            match outbox.ready() {
                Some(msg) => writer.feed(&msg)?,
                None => break,
            }
            frames += 1;
        }
        busy_for = if frames > 1 {
            PROBE_EVERY
        } else {
            busy_for.saturating_sub(1)
        };
        writer.flush().await?;
    }
    Ok(())
}

/// How often a quiet pump yields to see whether messages are bunching up,
/// and how many single-frame batches in a row end a busy spell.
const PROBE_EVERY: u32 = 16;

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::*;
    use crate::FrameReader;

    /// Counts the writes that reach the inner stream.
    struct CountingWriter<W> {
        inner: W,
        writes: Arc<AtomicUsize>,
    }

    impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn queued_messages_go_out_in_order_and_together() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let writer = FrameWriter::<_, u32>::new(CountingWriter {
            inner: a,
            writes: writes.clone(),
        });
        let (tx, rx) = mpsc::channel(1024);
        for i in 0..500u32 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        pump(writer, rx).await.unwrap();
        assert_eq!(
            writes.load(Ordering::Relaxed),
            1,
            "500 queued frames, one write"
        );
        let mut reader = FrameReader::<_, u32>::new(b);
        for i in 0..500u32 {
            assert_eq!(reader.recv().await.unwrap(), Some(i));
        }
        assert_eq!(reader.recv().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_lone_message_is_written_without_waiting_for_more() {
        let (a, b) = tokio::io::duplex(4096);
        let (tx, rx) = mpsc::unbounded_channel();
        let pumping = tokio::spawn(pump(FrameWriter::<_, String>::new(a), rx));
        let mut reader = FrameReader::<_, String>::new(b);
        for i in 0..40 {
            tx.send(format!("message {i}")).unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader.recv())
                .await
                .expect("the pump wrote the message while the sender waited");
            assert_eq!(got.unwrap(), Some(format!("message {i}")));
        }
        drop(tx);
        pumping.await.unwrap().unwrap();
    }
}
