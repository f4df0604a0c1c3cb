//! Length-prefixed MessagePack framing: a 4-byte big-endian length, then the
//! body. A frame longer than the endpoint's cap is refused before anything is
//! allocated for it.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames above this size are refused unless an endpoint says otherwise.
/// Large enough for an actor's wasm sent whole, small enough that a bogus
/// length cannot make a process allocate gigabytes.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

const LEN_PREFIX: usize = 4;

/// How deeply the MessagePack of a message may nest (arrays and maps in
/// one another, ignored fields included). Our messages nest a few levels;
/// the decoder's own default (1024) lets a small frame overflow a tokio
/// worker's 2 MiB stack in a debug build, which aborts the process.
pub const MAX_DEPTH: usize = 32;

/// Decodes one message body as every endpoint does: MessagePack, at most
/// [`MAX_DEPTH`] levels deep. Use it for any MessagePack a peer sent.
pub fn decode<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(body);
    deserializer.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut deserializer)
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o error on the channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("the channel closed in the middle of a frame")]
    Truncated,
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("could not encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("handshake failed: {0}")]
    Handshake(String),
}

/// How much room a reader offers the kernel at least: a burst of small
/// frames arrives in one read instead of two reads (prefix, body) per frame.
/// Only what arrives is written, so an idle reader costs little memory.
const READ_AHEAD: usize = 16 * 1024;

/// Above this, a buffer left by one large frame is given back.
const KEEP_BUF: usize = 1024 * 1024;

/// The receiving side of a channel carrying messages of type `T`.
///
/// It reads ahead: bytes after the current frame stay buffered for the next
/// [`recv`](Self::recv). Use it for the whole life of a channel (the
/// handshake reads exactly, so nothing of the channel is lost before this
/// reader takes over). `recv` is cancel-safe: a frame is consumed only once
/// it is complete.
#[derive(Debug)]
pub struct FrameReader<R, T> {
    inner: R,
    max_len: usize,
    /// `buf[start..]` is received and not yet consumed.
    buf: Vec<u8>,
    start: usize,
    _msg: PhantomData<fn() -> T>,
}

impl<R: AsyncRead + Unpin, T: DeserializeOwned> FrameReader<R, T> {
    pub fn new(inner: R) -> Self {
        Self::with_max_len(inner, DEFAULT_MAX_FRAME_LEN)
    }

    pub fn with_max_len(inner: R, max_len: usize) -> Self {
        Self {
            inner,
            max_len,
            buf: Vec::new(),
            start: 0,
            _msg: PhantomData,
        }
    }

    /// Reads one message. `Ok(None)` is a clean end of stream between frames.
    pub async fn recv(&mut self) -> Result<Option<T>, WireError> {
        loop {
            let available = &self.buf[self.start..];
            let wanted = if available.len() >= LEN_PREFIX {
                let len = frame_len(available, self.max_len)?;
                if available.len() >= LEN_PREFIX + len {
                    let decoded = decode(&available[LEN_PREFIX..LEN_PREFIX + len]);
                    self.start += LEN_PREFIX + len;
                    if self.start == self.buf.len() {
                        self.start = 0;
                        self.buf.clear();
                        if self.buf.capacity() > KEEP_BUF {
                            self.buf = Vec::new();
                        }
                    }
                    return Ok(Some(decoded?));
                }
                LEN_PREFIX + len
            } else {
                LEN_PREFIX
            };
            self.make_room(wanted);
            // Reads into the spare capacity; nothing is zeroed first.
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.start == self.buf.len() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
        }
    }

    /// Moves the unconsumed bytes to the front and makes room for a frame of
    /// `frame` bytes in all, or a read-ahead, whichever is larger.
    fn make_room(&mut self, frame: usize) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let wanted = frame.max(READ_AHEAD);
        if self.buf.capacity() < wanted {
            self.buf.reserve(wanted - self.buf.len());
        }
    }
}

/// The length in a frame's prefix, refused above `max_len` before anything
/// is allocated for the body.
fn frame_len(prefix: &[u8], max_len: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max_len {
        return Err(WireError::FrameTooLarge { len, max: max_len });
    }
    Ok(len)
}

/// Reads exactly one frame and nothing after it, for the handshake: what
/// follows belongs to the reader that takes over the channel.
pub(crate) async fn recv_exact<R, T>(reader: &mut R, max_len: usize) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; LEN_PREFIX];
    let mut filled = 0;
    while filled < LEN_PREFIX {
        let n = reader.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        filled += n;
    }
    let len = frame_len(&prefix, max_len)?;
    let mut body = vec![0; len];
    match reader.read_exact(&mut body).await {
        Ok(_) => Ok(Some(decode(&body)?)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Appends `msg` to `buf` as one frame; on error `buf` is left as it was.
pub(crate) fn encode_frame<T: Serialize>(
    buf: &mut Vec<u8>,
    msg: &T,
    max_len: usize,
) -> Result<(), WireError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; LEN_PREFIX]);
    if let Err(e) = rmp_serde::encode::write_named(buf, msg) {
        buf.truncate(start);
        return Err(e.into());
    }
    let len = buf.len() - start - LEN_PREFIX;
    if len > max_len {
        buf.truncate(start);
        return Err(WireError::FrameTooLarge { len, max: max_len });
    }
    buf[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// The sending side of a channel carrying messages of type `T`.
#[derive(Debug)]
pub struct FrameWriter<W, T> {
    inner: W,
    max_len: usize,
    buf: Vec<u8>,
    _msg: PhantomData<fn(T)>,
}

impl<W: AsyncWrite + Unpin, T: Serialize> FrameWriter<W, T> {
    pub fn new(inner: W) -> Self {
        Self::with_max_len(inner, DEFAULT_MAX_FRAME_LEN)
    }

    pub fn with_max_len(inner: W, max_len: usize) -> Self {
        Self {
            inner,
            max_len,
            buf: Vec::with_capacity(256),
            _msg: PhantomData,
        }
    }

    /// Encodes and writes one message; the encode buffer is reused across calls.
    pub async fn send(&mut self, msg: &T) -> Result<(), WireError> {
        self.feed(msg)?;
        self.flush().await
    }

    /// Encodes one message into the buffer without writing it, so a busy
    /// sender can put many frames into one write: `feed` them, then `flush`.
    pub fn feed(&mut self, msg: &T) -> Result<(), WireError> {
        encode_frame(&mut self.buf, msg, self.max_len)
    }

    /// Appends bytes that are already framed (the rest of a frame another
    /// writer of the same socket began).
    pub(crate) fn feed_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The largest body this writer sends.
    pub(crate) fn max_len(&self) -> usize {
        self.max_len
    }

    /// How many bytes are fed and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes every fed frame.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.buf.is_empty() {
            let written = self.inner.write_all(&self.buf).await;
            self.buf.clear();
            written?;
            self.inner.flush().await?;
        }
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Msg {
        id: u64,
        text: String,
    }

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let (a, b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::<_, Msg>::new(a);
        let mut r = FrameReader::<_, Msg>::new(b);
        for id in 0..3 {
            w.send(&Msg {
                id,
                text: "hi".into(),
            })
            .await
            .unwrap();
        }
        drop(w);
        for id in 0..3 {
            assert_eq!(r.recv().await.unwrap().unwrap().id, id);
        }
        assert!(r.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn fed_frames_go_out_in_one_write() {
        let (a, b) = tokio::io::duplex(4096);
        let mut w = FrameWriter::<_, Msg>::new(a);
        for id in 0..3 {
            w.feed(&Msg {
                id,
                text: "x".into(),
            })
            .unwrap();
        }
        assert!(w.buffered() > 0);
        w.flush().await.unwrap();
        assert_eq!(w.buffered(), 0);
        drop(w);
        let mut r = FrameReader::<_, Msg>::new(b);
        for id in 0..3 {
            assert_eq!(r.recv().await.unwrap().unwrap().id, id);
        }
        assert!(r.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frames_split_anywhere_and_run_together_are_read_whole() {
        let mut bytes = Vec::new();
        let mut w = FrameWriter::<_, Msg>::new(&mut bytes);
        for id in 0..50 {
            w.feed(&Msg {
                id,
                text: "y".repeat(id as usize * 100),
            })
            .unwrap();
        }
        w.flush().await.unwrap();
        // Deliver in odd-sized pieces: prefixes and bodies cut mid-way.
        let (mut a, b) = tokio::io::duplex(97);
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(13) {
                a.write_all(piece).await.unwrap();
            }
        });
        let mut r = FrameReader::<_, Msg>::new(b);
        for id in 0..50 {
            let msg = r.recv().await.unwrap().unwrap();
            assert_eq!((msg.id, msg.text.len()), (id, id as usize * 100));
        }
        writer.await.unwrap();
        assert!(r.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_read_ahead_is_read_whole() {
        let (a, b) = tokio::io::duplex(4096);
        let mut w = FrameWriter::<_, Msg>::new(a);
        let big = "z".repeat(3 * READ_AHEAD);
        let sent = big.clone();
        tokio::spawn(async move {
            w.send(&Msg { id: 1, text: sent }).await.unwrap();
            w.send(&Msg {
                id: 2,
                text: "after".into(),
            })
            .await
            .unwrap();
        });
        let mut r = FrameReader::<_, Msg>::new(b);
        assert_eq!(r.recv().await.unwrap().unwrap().text, big);
        assert_eq!(r.recv().await.unwrap().unwrap().text, "after");
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_body() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut r = FrameReader::<_, Msg>::with_max_len(b, 1024);
        assert!(matches!(
            r.recv().await,
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    /// Found by the fuzzer: a 3 KiB frame of nested one-entry maps made the
    /// decoder recurse until a 2 MiB stack overflowed (an abort, not an
    /// error) in a debug build.
    #[test]
    fn deeply_nested_frames_are_refused_within_a_workers_stack() {
        let run = || {
            let mut body = Vec::new();
            // {"": {"": ...
            body.extend([0x81, 0xa0].repeat(100_000));
            body.push(0xc0);
            let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let result = rt.block_on(async {
                let mut r = FrameReader::<_, Msg>::new(&bytes[..]);
                r.recv().await
            });
            assert!(
                matches!(&result, Err(WireError::Decode(e)) if e.to_string().contains("depth")),
                "{result:?}"
            );
            // Nesting within the bound still decodes (here: ignored fields).
            let mut ok = vec![
                0x83, 0xa2, b'i', b'd', 0x01, 0xa4, b't', b'e', b'x', b't', 0xa0,
            ];
            ok.extend_from_slice(&[0xa1, b'x']);
            ok.extend(std::iter::repeat_n(0x91, MAX_DEPTH - 3));
            ok.push(0xc0);
            assert_eq!(decode::<Msg>(&ok).unwrap().id, 1);
        };
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    #[tokio::test]
    async fn truncated_and_garbage_frames_are_errors() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        let mut r = FrameReader::<_, Msg>::new(b);
        assert!(matches!(r.recv().await, Err(WireError::Truncated)));

        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
        let mut r = FrameReader::<_, Msg>::new(b);
        assert!(matches!(r.recv().await, Err(WireError::Decode(_))));
    }
}
