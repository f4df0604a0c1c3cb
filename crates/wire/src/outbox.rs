//! Every channel's outgoing side: an [`Outbox`] that any task sends on, and
//! one [`Pump`] task per channel that writes what queued up.
//!
//! Two ways out, one order:
//!
//! - **Under load** messages queue, and the pump encodes what queued up and
//!   writes it together, so a busy channel makes one write per burst rather
//!   than one per message, and the peer wakes once for all of them.
//! - **While the channel is quiet** (nothing queued, nothing being written,
//!   no write in the last [`QUIET`]) the sending task encodes its message
//!   and writes it to the socket itself, without waking the pump. Traced
//!   on a keyvalue hop, handing a lone message to the pump cost 4–5 us on
//!   each side before the write even began.
//! - **A message its sender knows to be alone** ([`Outbox::send_alone`]: a
//!   request or answer with no other call in flight on the channel) is
//!   written the same way even within [`QUIET`]: nothing will come to
//!   batch it with, and an actor making one provider call after another
//!   sends more often than the window allows.
//!
//! A message is written directly only when nothing is queued ahead of it,
//! under the same lock that counts what is queued, so frames leave in the
//! order their sends completed. If the socket takes only part of a direct
//! write, the rest goes to the pump, ahead of anything queued after it.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, Semaphore};

use crate::error::CallError;
use crate::frame::encode_frame;
use crate::message::WireMessage;
use crate::{FrameWriter, WireError};

/// A batch stops growing here: enough to amortise the syscall, small enough
/// to keep the first frame's latency.
const BATCH_BYTES: usize = 64 * 1024;

/// How often a quiet pump yields to see whether messages are bunching up,
/// and how many single-frame batches in a row end a busy spell.
const PROBE_EVERY: u32 = 16;

/// A message sent sooner than this after the channel's last write goes
/// through the pump, which can batch it with others; later, its sender
/// writes it. ([`Outbox::send_alone`] is not held to it.) A channel serving
/// one call at a time sees one message per 50–200 us; under load, one every
/// few microseconds.
pub const QUIET: Duration = Duration::from_micros(50);

/// Direct-write buffers above this are given back after use.
const KEEP_BUF: usize = 64 * 1024;

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The channel's pump is gone, or a write to the socket failed.
    #[error("the channel is closed")]
    Closed,
    /// The message would make a frame over the channel's cap; nothing was
    /// queued, and the channel goes on serving.
    #[error("a message of {len} bytes exceeds the channel's limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

impl SendError {
    /// As the error of the call whose message this was (`what`: "reply",
    /// "request", ...).
    pub fn into_call_error(self, what: &str) -> CallError {
        match self {
            SendError::Closed => CallError::unavailable("the channel is closed"),
            SendError::TooLarge { len, max } => CallError::oversized(what, len, max),
        }
    }
}

/// The sending side of one channel; cheap to clone. Sends complete in the
/// order they return.
pub struct Outbox<T> {
    queue: mpsc::UnboundedSender<Item<T>>,
    core: Arc<Core>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            core: self.core.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

enum Item<T> {
    /// A message, and whether it holds a unit of a bounded outbox's room.
    Message(T, bool),
    /// A direct write stopped part-way: its rest waits in `State::leftover`.
    Leftover,
    /// A direct write failed: the pump ends with this error.
    Failed(io::Error),
}

/// What the outbox and its pump share.
struct Core {
    state: Mutex<State>,
    /// Room for queued messages in a bounded outbox (direct writes take none).
    room: Option<Semaphore>,
    max_len: usize,
}

struct State {
    /// The socket, for writes from sending tasks; `None` for in-memory
    /// streams (whose messages always go through the pump) and once the
    /// pump is gone, so this handle never keeps the socket open after it.
    socket: Option<UnixStream>,
    /// Items handed to the pump and not yet written by it. While any are,
    /// every message queues behind them.
    queued: usize,
    /// The unwritten rest of a direct write; the pump writes it first.
    leftover: Vec<u8>,
    /// The direct writes' encode buffer, reused.
    buf: Vec<u8>,
    /// When the channel last wrote, directly or through the pump.
    last_write: Option<Instant>,
    /// How many messages were written directly (for tests and tracing).
    direct_writes: u64,
    /// The pump's recent batches held several frames.
    busy: bool,
    closed: bool,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic cannot leave `State` half-updated in a way that matters:
        // at worst a count is off until the channel closes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: WireMessage> Outbox<T> {
    /// An outbox writing to `writer` through the returned pump (spawn
    /// [`Pump::run`]). `direct` is the same socket for writes from sending
    /// tasks ([`SocketWriter::direct`](crate::socket::SocketWriter::direct));
    /// `capacity` bounds how many messages may queue (`None`: unbounded).
    pub fn new<W: AsyncWrite + Unpin>(
        writer: FrameWriter<W, T>,
        direct: Option<UnixStream>,
        capacity: Option<usize>,
    ) -> (Self, Pump<W, T>) {
        let (queue, items) = mpsc::unbounded_channel();
        let core = Arc::new(Core {
            state: Mutex::new(State {
                socket: direct,
                queued: 0,
                leftover: Vec::new(),
                buf: Vec::new(),
                last_write: None,
                direct_writes: 0,
                busy: false,
                closed: false,
            }),
            room: capacity.map(Semaphore::new),
            max_len: writer.max_len(),
        });
        let outbox = Self {
            queue,
            core: core.clone(),
        };
        (
            outbox,
            Pump {
                writer,
                items,
                core,
            },
        )
    }

    /// True once the pump is gone.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Completes once the pump is gone (the channel closed).
    pub async fn closed(&self) {
        self.queue.closed().await;
    }

    /// Sends `msg`, waiting for room if the outbox is bounded and full. A
    /// message too large for the channel is refused at once.
    pub async fn send(&self, msg: T) -> Result<(), SendError> {
        self.send_with(msg, false).await
    }

    /// Sends `msg`, which its sender knows to be alone: no other call is in
    /// flight on this channel, so no message is likely to follow soon for
    /// the pump to batch it with. It is written at once when nothing is
    /// queued, without waiting out the [`QUIET`] window after the last write.
    pub async fn send_alone(&self, msg: T) -> Result<(), SendError> {
        self.send_with(msg, true).await
    }

    async fn send_with(&self, msg: T, alone: bool) -> Result<(), SendError> {
        self.check_size(&msg)?;
        let msg = match self.try_direct(msg, alone) {
            Direct::Written => return Ok(()),
            Direct::Failed(e) => return Err(e),
            Direct::Queue(msg) => msg,
        };
        let held = match &self.core.room {
            Some(room) => {
                room.acquire()
                    .await
                    .map_err(|_| SendError::Closed)?
                    .forget();
                true
            }
            None => false,
        };
        self.enqueue(msg, held)
    }

    /// Sends a reply; one too large for the channel is replaced by its
    /// refusal (an error reply with the same id, see
    /// [`WireMessage::refuse`]), so the caller always hears back.
    pub async fn send_reply(&self, msg: T) -> Result<(), SendError> {
        match self.fit(msg) {
            Ok(msg) => self.send(msg).await,
            Err(e) => Err(e),
        }
    }

    /// [`send_reply`](Self::send_reply) without waiting, like
    /// [`send_now`](Self::send_now).
    pub fn send_reply_now(&self, msg: T) -> Result<(), SendError> {
        self.fit(msg).and_then(|msg| self.send_now(msg))
    }

    /// `msg`, or its refusal if it is over the channel's cap (an error
    /// reply with the same id); a message with no refusal is an error.
    pub fn fit(&self, msg: T) -> Result<T, SendError> {
        let len = msg.size_hint();
        let max = self.core.max_len;
        if len <= max {
            return Ok(msg);
        }
        msg.refuse(CallError::oversized("reply", len, max))
            .ok_or(SendError::TooLarge { len, max })
    }

    /// Sends `msg` without waiting, past the bound of a bounded outbox.
    pub fn send_now(&self, msg: T) -> Result<(), SendError> {
        self.check_size(&msg)?;
        match self.try_direct(msg, false) {
            Direct::Written => Ok(()),
            Direct::Failed(e) => Err(e),
            Direct::Queue(msg) => {
                // Room is taken when there is some, so `send` still waits
                // behind what this one queues; past the bound, none is.
                let held = self
                    .core
                    .room
                    .as_ref()
                    .and_then(|room| room.try_acquire().ok())
                    .map(|permit| permit.forget())
                    .is_some();
                self.enqueue(msg, held)
            }
        }
    }

    /// Refuses, before anything is queued, a message its hint shows to be
    /// over the channel's cap.
    fn check_size(&self, msg: &T) -> Result<(), SendError> {
        let len = msg.size_hint();
        if len > self.core.max_len {
            return Err(SendError::TooLarge {
                len,
                max: self.core.max_len,
            });
        }
        Ok(())
    }

    fn enqueue(&self, msg: T, held: bool) -> Result<(), SendError> {
        let mut state = self.core.lock();
        if state.closed {
            return Err(SendError::Closed);
        }
        self.queue
            .send(Item::Message(msg, held))
            .map_err(|_| SendError::Closed)?;
        state.queued += 1;
        Ok(())
    }

    /// Writes `msg` from this task if the channel is quiet, or if nothing is
    /// queued and the message is `alone`.
    fn try_direct(&self, msg: T, alone: bool) -> Direct<T> {
        let mut guard = match self.core.state.try_lock() {
            Ok(state) => state,
            // Someone else is sending right now: that is load.
            Err(TryLockError::WouldBlock) => return Direct::Queue(msg),
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
        };
        let state = &mut *guard;
        if state.closed {
            return Direct::Failed(SendError::Closed);
        }
        let Some(socket) = &state.socket else {
            return Direct::Queue(msg);
        };
        if state.queued > 0 || state.busy {
            return Direct::Queue(msg);
        }
        let now = Instant::now();
        if !alone
            && state
                .last_write
                .is_some_and(|t| now.saturating_duration_since(t) < QUIET)
        {
            return Direct::Queue(msg);
        }
        let buf = &mut state.buf;
        buf.clear();
        match encode_frame(buf, &msg, self.core.max_len) {
            Ok(()) => {}
            Err(WireError::FrameTooLarge { len, max }) => {
                return Direct::Failed(SendError::TooLarge { len, max })
            }
            // The pump meets the same error and drops the message.
            Err(_) => return Direct::Queue(msg),
        }
        state.last_write = Some(now);
        state.direct_writes += 1;
        let mut written = 0;
        while written < buf.len() {
            match (&*socket).write(&buf[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // The peer is gone. End the pump with the error, as if
                    // it had failed the write itself, so whoever watches
                    // the channel's writer learns of it.
                    state.closed = true;
                    state.socket = None;
                    let _ = self.queue.send(Item::Failed(e));
                    return Direct::Failed(SendError::Closed);
                }
            }
        }
        if written < buf.len() {
            // The socket is full: the pump waits for room and writes the
            // rest before anything queued after this.
            if self.queue.send(Item::Leftover).is_err() {
                state.closed = true;
                return Direct::Failed(SendError::Closed);
            }
            state.leftover.extend_from_slice(&buf[written..]);
            state.queued += 1;
        }
        if buf.capacity() > KEEP_BUF {
            *buf = Vec::new();
        }
        Direct::Written
    }
}

enum Direct<T> {
    Written,
    Failed(SendError),
    Queue(T),
}

/// The one writer task of a channel: [`run`](Pump::run) it.
pub struct Pump<W, T> {
    writer: FrameWriter<W, T>,
    items: mpsc::UnboundedReceiver<Item<T>>,
    core: Arc<Core>,
}

impl<W, T> Drop for Pump<W, T> {
    fn drop(&mut self) {
        // However the pump ends (error, abort), senders learn the channel
        // is closed instead of queueing into nothing or writing around it,
        // and the socket is no longer held open through the outbox.
        let mut state = self.core.lock();
        state.closed = true;
        state.socket = None;
        drop(state);
        if let Some(room) = &self.core.room {
            room.close();
        }
    }
}

impl<W: AsyncWrite + Unpin, T: WireMessage> Pump<W, T> {
    /// Writes what the outbox queues until every [`Outbox`] is dropped
    /// (`Ok`) or a write fails, its own or a sender's direct one.
    ///
    /// Under load, after the first item of a batch the task yields once, so
    /// the tasks woken with it (other calls finishing on this thread) can
    /// queue their messages before the write. A lone item should not wait
    /// for that pass of the scheduler, so the pump yields while recent
    /// batches held more than one frame, and otherwise only once every
    /// [`PROBE_EVERY`] batches, to notice load.
    pub async fn run(mut self) -> Result<(), WireError> {
        let mut busy_for = 0u32;
        let mut batches = 0u32;
        while let Some(first) = self.items.recv().await {
            let mut items = 1;
            let mut messages = self.feed(first)?;
            batches = batches.wrapping_add(1);
            if busy_for > 0 || batches.is_multiple_of(PROBE_EVERY) {
                tokio::task::yield_now().await;
            }
            while self.writer.buffered() < BATCH_BYTES {
                match self.items.try_recv() {
                    Ok(item) => messages += self.feed(item)?,
                    Err(_) => break,
                }
                items += 1;
            }
            busy_for = if items > 1 {
                PROBE_EVERY
            } else {
                busy_for.saturating_sub(1)
            };
            self.writer.flush().await?;
            let mut state = self.core.lock();
            state.last_write = Some(Instant::now());
            state.queued -= items;
            state.busy = busy_for > 0;
            drop(state);
            if let Some(room) = &self.core.room {
                room.add_permits(messages);
            }
        }
        Ok(())
    }

    /// Encodes one item into the batch; returns the room it held (0 or 1).
    /// A message that cannot be encoded (over the cap, whatever its hint
    /// said) never ends the channel: its replacement goes instead, an
    /// error reply for a reply, or nothing.
    fn feed(&mut self, item: Item<T>) -> Result<usize, WireError> {
        match item {
            Item::Message(msg, held) => {
                if let Err(e) = self.writer.feed(&msg) {
                    let error = match e {
                        WireError::FrameTooLarge { len, max } => {
                            CallError::oversized("message", len, max)
                        }
                        other => CallError::internal(format!("cannot encode a message: {other}")),
                    };
                    tracing::warn!("not sent: {error}");
                    if let Some(instead) = msg.refuse(error) {
                        if let Err(e) = self.writer.feed(&instead) {
                            tracing::warn!("not sent either: {e}");
                        }
                    }
                }
                Ok(usize::from(held))
            }
            Item::Leftover => {
                let rest = std::mem::take(&mut self.core.lock().leftover);
                self.writer.feed_raw(&rest);
                Ok(0)
            }
            Item::Failed(e) => Err(WireError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use super::*;
    use crate::message::{len_of, ENVELOPE};
    use crate::FrameReader;

    impl WireMessage for u32 {
        fn size_hint(&self) -> usize {
            ENVELOPE
        }
    }
    impl WireMessage for (u32, u32) {
        fn size_hint(&self) -> usize {
            ENVELOPE
        }
    }
    impl WireMessage for String {
        fn size_hint(&self) -> usize {
            ENVELOPE + len_of(self)
        }
    }
    impl WireMessage for Vec<u8> {
        // Encoded as an array of integers: up to two bytes each.
        fn size_hint(&self) -> usize {
            ENVELOPE + 2 * self.len()
        }
    }

    /// A reply whose oversized body the pump turns into an error.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Reply {
        Ok(u32, String),
        Err(u32, String),
    }
    impl WireMessage for Reply {
        // Lies on purpose: the pump must cope with a message that encodes
        // larger than its hint.
        fn size_hint(&self) -> usize {
            ENVELOPE
        }
        fn refuse(&self, error: CallError) -> Option<Self> {
            match self {
                Reply::Ok(id, _) | Reply::Err(id, _) => Some(Reply::Err(*id, error.message)),
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_and_the_channel_goes_on() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (outbox, pump) =
            Outbox::new(FrameWriter::<_, String>::with_max_len(a, 1024), None, None);
        let pumping = tokio::spawn(pump.run());
        let err = outbox.send("x".repeat(4096)).await.unwrap_err();
        assert!(
            matches!(err, SendError::TooLarge { max: 1024, .. }),
            "{err:?}"
        );
        let call_error = err.into_call_error("reply");
        assert_eq!(call_error.kind, crate::error::ErrorKind::TooLarge);
        assert!(call_error.message.starts_with("reply of "), "{call_error}");
        outbox.send("after".into()).await.unwrap();
        let mut reader = FrameReader::<_, String>::new(b);
        assert_eq!(reader.recv().await.unwrap().as_deref(), Some("after"));
        drop(outbox);
        pumping.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_reply_over_the_cap_is_sent_as_its_refusal() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (outbox, pump) =
            Outbox::new(FrameWriter::<_, String>::with_max_len(a, 1024), None, None);
        let pumping = tokio::spawn(pump.run());
        // A String has no refusal: the sender learns of it.
        let err = outbox.send_reply("z".repeat(2048)).await.unwrap_err();
        assert!(matches!(err, SendError::TooLarge { .. }), "{err:?}");
        drop(outbox);
        pumping.await.unwrap().unwrap();
        drop(b);

        let (a, b) = tokio::io::duplex(1 << 16);
        let (outbox, pump) =
            Outbox::new(FrameWriter::<_, Checked>::with_max_len(a, 1024), None, None);
        let pumping = tokio::spawn(pump.run());
        outbox
            .send_reply(Checked::Ok(9, "w".repeat(4096)))
            .await
            .unwrap();
        let mut reader = FrameReader::<_, Checked>::new(b);
        match reader.recv().await.unwrap() {
            Some(Checked::Err(9, message)) => assert!(
                message.starts_with("reply of ")
                    && message.ends_with("exceeds the 1 KiB frame limit"),
                "{message}"
            ),
            other => panic!("expected an error reply for call 9, got {other:?}"),
        }
        drop(outbox);
        pumping.await.unwrap().unwrap();
    }

    /// A reply with an honest hint.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Checked {
        Ok(u32, String),
        Err(u32, String),
    }
    impl WireMessage for Checked {
        fn size_hint(&self) -> usize {
            match self {
                Checked::Ok(_, text) | Checked::Err(_, text) => ENVELOPE + len_of(text),
            }
        }
        fn refuse(&self, error: CallError) -> Option<Self> {
            match self {
                Checked::Ok(id, _) | Checked::Err(id, _) => Some(Checked::Err(*id, error.message)),
            }
        }
    }

    #[tokio::test]
    async fn a_reply_that_encodes_too_large_becomes_an_error_reply() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (outbox, pump) =
            Outbox::new(FrameWriter::<_, Reply>::with_max_len(a, 1024), None, None);
        let pumping = tokio::spawn(pump.run());
        // Past the sender's check (the hint lies), caught by the pump.
        outbox.send(Reply::Ok(1, "y".repeat(4096))).await.unwrap();
        outbox.send(Reply::Ok(2, "fine".into())).await.unwrap();
        let mut reader = FrameReader::<_, Reply>::new(b);
        match reader.recv().await.unwrap() {
            Some(Reply::Err(1, message)) => {
                assert!(
                    message.contains("exceeds the 1 KiB frame limit"),
                    "{message}"
                )
            }
            other => panic!("expected an error reply for call 1, got {other:?}"),
        }
        assert_eq!(
            reader.recv().await.unwrap(),
            Some(Reply::Ok(2, "fine".into()))
        );
        drop(outbox);
        pumping.await.unwrap().unwrap();
    }

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
        let (outbox, pump) = Outbox::new(writer, None, Some(1024));
        for i in 0..500u32 {
            outbox.send(i).await.unwrap();
        }
        drop(outbox);
        pump.run().await.unwrap();
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
        let (outbox, pump) = Outbox::new(FrameWriter::<_, String>::new(a), None, None);
        let pumping = tokio::spawn(pump.run());
        let mut reader = FrameReader::<_, String>::new(b);
        for i in 0..40 {
            outbox.send_now(format!("message {i}")).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), reader.recv())
                .await
                .expect("the pump wrote the message while the sender waited");
            assert_eq!(got.unwrap(), Some(format!("message {i}")));
        }
        drop(outbox);
        pumping.await.unwrap().unwrap();
    }

    /// An outbox on a real socket pair, its pump spawned.
    fn socket_outbox<T>(
        capacity: Option<usize>,
    ) -> (Outbox<T>, FrameReader<crate::socket::SocketReader, T>)
    where
        T: WireMessage + serde::de::DeserializeOwned + Send + 'static,
    {
        let (a, b) = UnixStream::pair().unwrap();
        let (_a_read, a_write) = crate::socket::split(a).unwrap();
        let (b_read, _b_write) = crate::socket::split(b).unwrap();
        let direct = a_write.direct().unwrap();
        let (outbox, pump) = Outbox::new(FrameWriter::new(a_write), Some(direct), capacity);
        tokio::spawn(pump.run());
        (outbox, FrameReader::new(b_read))
    }

    #[tokio::test]
    async fn a_quiet_channel_writes_from_the_sender_itself() {
        let (outbox, mut reader) = socket_outbox::<String>(Some(8));
        for i in 0..5 {
            tokio::time::sleep(QUIET * 2).await;
            outbox.send(format!("quiet {i}")).await.unwrap();
            // Written by `send` itself, not queued for the pump.
            assert_eq!(outbox.core.lock().direct_writes, i + 1);
            assert_eq!(reader.recv().await.unwrap(), Some(format!("quiet {i}")));
        }
    }

    #[tokio::test]
    async fn within_the_quiet_window_only_a_message_sent_alone_is_written_directly() {
        let (outbox, mut reader) = socket_outbox::<u32>(Some(8));
        // The last write "happens" an hour from now, so every send below
        // falls within the window however slowly this test runs.
        let within_window =
            || outbox.core.lock().last_write = Some(Instant::now() + Duration::from_secs(3600));
        within_window();
        outbox.send(1).await.unwrap();
        assert_eq!(
            outbox.core.lock().direct_writes,
            0,
            "an ordinary send is queued"
        );
        assert_eq!(reader.recv().await.unwrap(), Some(1));
        while outbox.core.lock().queued > 0 {
            // The pump is between its write and its bookkeeping.
            tokio::task::yield_now().await;
        }
        within_window();
        outbox.send_alone(2).await.unwrap();
        assert_eq!(
            outbox.core.lock().direct_writes,
            1,
            "one sent alone is written by its sender"
        );
        assert_eq!(reader.recv().await.unwrap(), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_on_a_socket_keep_each_senders_order() {
        let (outbox, mut reader) = socket_outbox::<(u32, u32)>(Some(16));
        let senders: Vec<_> = (0..8u32)
            .map(|s| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for i in 0..2000u32 {
                        outbox.send((s, i)).await.unwrap();
                        if i % 97 == 0 {
                            // Let the channel go quiet now and then, so both
                            // ways out are taken.
                            tokio::time::sleep(QUIET * 2).await;
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u32; 8];
        for _ in 0..8 * 2000 {
            let (s, i) = reader.recv().await.unwrap().unwrap();
            assert_eq!(i, next[s as usize], "sender {s} out of order");
            next[s as usize] += 1;
        }
        for s in senders {
            s.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_direct_write_the_socket_cannot_take_whole_is_finished_by_the_pump() {
        let (outbox, mut reader) = socket_outbox::<Vec<u8>>(None);
        // Far larger than a socket buffer: the direct write stops part-way.
        let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| i as u8).collect();
        outbox.send(big.clone()).await.unwrap();
        assert_eq!(outbox.core.lock().direct_writes, 1, "begun directly");
        outbox.send(vec![1, 2, 3]).await.unwrap();
        let got = reader.recv().await.unwrap().unwrap();
        assert!(got == big, "the large frame arrived whole");
        assert_eq!(reader.recv().await.unwrap(), Some(vec![1, 2, 3]));
    }

    #[tokio::test]
    async fn the_outbox_does_not_hold_the_socket_open_after_its_pump() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a_read, a_write) = crate::socket::split(a).unwrap();
        let (b_read, _b_write) = crate::socket::split(b).unwrap();
        let direct = a_write.direct().unwrap();
        let (outbox, pump) = Outbox::new(FrameWriter::<_, u32>::new(a_write), Some(direct), None);
        let pumping = tokio::spawn(pump.run());
        drop(a_read);
        pumping.abort();
        let _ = pumping.await;
        // `outbox` lives on, yet the peer sees the end of the stream.
        let mut reader = FrameReader::<_, u32>::new(b_read);
        let end = tokio::time::timeout(Duration::from_secs(5), reader.recv()).await;
        assert!(matches!(end, Ok(Ok(None))), "{end:?}");
        assert!(outbox.send_now(1).is_err());
    }

    #[tokio::test]
    async fn a_failed_direct_write_ends_the_pump_with_its_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_a_read, a_write) = crate::socket::split(a).unwrap();
        drop(b);
        let direct = a_write.direct().unwrap();
        let (outbox, pump) = Outbox::new(FrameWriter::<_, u32>::new(a_write), Some(direct), None);
        let pumping = tokio::spawn(pump.run());
        assert!(outbox.send(7).await.is_err(), "the peer is gone");
        assert_eq!(outbox.core.lock().direct_writes, 1, "it was tried directly");
        let ended = tokio::time::timeout(Duration::from_secs(5), pumping)
            .await
            .expect("the pump ended")
            .unwrap();
        assert!(matches!(ended, Err(WireError::Io(_))), "{ended:?}");
        assert!(outbox.is_closed());
    }

    #[tokio::test]
    async fn sends_fail_once_the_pump_is_gone() {
        let (outbox, pump) =
            Outbox::new(FrameWriter::<_, u32>::new(tokio::io::sink()), None, Some(4));
        drop(pump);
        assert!(outbox.send(1).await.is_err());
        assert!(outbox.send_now(2).is_err());
    }
}
