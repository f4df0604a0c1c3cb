//! Length-prefixed MessagePack framing: a 4-byte big-endian length, then the
//! body. A frame longer than the endpoint's cap is refused before anything is
//! allocated for it.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames above this size are refused unless an endpoint says otherwise.
/// Large enough for an actor's wasm sent whole, small enough that a bogus
/// length cannot make a process allocate gigabytes.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

const LEN_PREFIX: usize = 4;

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

/// The receiving side of a channel carrying messages of type `T`.
#[derive(Debug)]
pub struct FrameReader<R, T> {
    inner: R,
    max_len: usize,
    buf: Vec<u8>,
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
            _msg: PhantomData,
        }
    }

    /// Reads one message. `Ok(None)` is a clean end of stream between frames.
    pub async fn recv(&mut self) -> Result<Option<T>, WireError> {
        let mut prefix = [0u8; LEN_PREFIX];
        let mut filled = 0;
        while filled < LEN_PREFIX {
            let n = self.inner.read(&mut prefix[filled..]).await?;
            if n == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
            filled += n;
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_len {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_len,
            });
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        match self.inner.read_exact(&mut self.buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(WireError::Truncated)
            }
            Err(e) => return Err(e.into()),
        }
        let msg = rmp_serde::from_slice(&self.buf)?;
        // Do not keep a huge buffer alive after one large frame.
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(Some(msg))
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
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
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; LEN_PREFIX]);
        if let Err(e) = rmp_serde::encode::write_named(&mut self.buf, msg) {
            self.buf.truncate(start);
            return Err(e.into());
        }
        let len = self.buf.len() - start - LEN_PREFIX;
        if len > self.max_len {
            self.buf.truncate(start);
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_len,
            });
        }
        self.buf[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
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
    async fn oversized_frame_is_refused_before_reading_body() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut r = FrameReader::<_, Msg>::with_max_len(b, 1024);
        assert!(matches!(
            r.recv().await,
            Err(WireError::FrameTooLarge { .. })
        ));
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
