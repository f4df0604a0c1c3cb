//! Unix-socket halves that wake their process only for what it waits for.
//!
//! tokio's `UnixStream` registers every socket for readability and
//! writability, edge-triggered. Each time the peer reads a frame, room
//! frees up in our send buffer and epoll reports the socket writable: the
//! thread parked in `epoll_wait` wakes for nothing. On a request/reply
//! channel that is one wasted wake-up (a context switch, often on the
//! other process's critical path) per message. [`split`] registers the
//! reading half for readability only and writes without registering; only
//! a write that finds the buffer full registers writability, until it
//! succeeds.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Splits a connected Unix stream into a reading and a writing half. Must
/// be called within a tokio runtime. The reader takes a short read to mean
/// the queue is drained, which holds for plain bytes: nothing may pass
/// descriptors (SCM_RIGHTS), credentials or out-of-band data on these
/// sockets, and the reading half must be the socket's only reader.
pub fn split(stream: UnixStream) -> io::Result<(SocketReader, SocketWriter)> {
    stream.set_nonblocking(true)?;
    let writer = stream.try_clone()?;
    Ok((
        SocketReader {
            fd: register(stream, Interest::READABLE)?,
        },
        SocketWriter {
            stream: writer,
            waiting_for_room: None,
        },
    ))
}

fn register(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: the `UnixStream` owns its descriptor: it stays open, and
    // `as_raw_fd` returns the same one, until the `AsyncFd` drops it.
    unsafe { AsyncFd::register_with_interest(stream, interest) }.map_err(|e| e.into_parts().1)
}

/// [`split`] for a connected `interprocess` local socket.
pub fn split_local(
    stream: interprocess::local_socket::tokio::Stream,
) -> io::Result<(SocketReader, SocketWriter)> {
    let interprocess::local_socket::tokio::Stream::UdSocket(stream) = stream;
    split(std::os::fd::OwnedFd::try_from(stream)?.into())
}

/// The reading half; registered for readability only.
#[derive(Debug)]
pub struct SocketReader {
    fd: AsyncFd<UnixStream>,
}

impl AsyncRead for SocketReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let fd = self.fd.get_ref().as_raw_fd();
            let room = buf.remaining();
            // SAFETY: recv only writes bytes into `unfilled` (it never
            // de-initialises any), at most `unfilled.len()` of them, while
            // the slice is borrowed for this one call; bytes it does not
            // write stay as they were, so they need not be initialised.
            let n = unsafe {
                let unfilled = buf.unfilled_mut();
                libc::recv(fd, unfilled.as_mut_ptr().cast(), unfilled.len(), 0)
            };
            if n >= 0 {
                let n = n as usize;
                // SAFETY: recv initialised the first `n` bytes of `unfilled`.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                if n > 0 && n < room {
                    // A stream socket's recv copies until its queue is
                    // empty or the buffer full, so a short read drained
                    // it: forget the readiness now rather than learn it
                    // from a recv that fails with EAGAIN. That recv sat
                    // on every message's critical path, between reading
                    // a frame and running the task it wakes. (tokio's
                    // own streams do the same; the readiness tick keeps
                    // an edge that arrived meanwhile.)
                    guard.clear_ready();
                }
                return Poll::Ready(Ok(()));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => guard.clear_ready(),
                io::ErrorKind::Interrupted => {}
                _ => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The writing half; it writes straight to the socket and registers for
/// writability only while the send buffer is full.
#[derive(Debug)]
pub struct SocketWriter {
    stream: UnixStream,
    /// A duplicate of the socket, registered for writability, while a
    /// write waits for room.
    waiting_for_room: Option<AsyncFd<UnixStream>>,
}

impl SocketWriter {
    /// The same socket, for an [`Outbox`](crate::outbox::Outbox) to write
    /// from sending tasks without waiting (it is non-blocking).
    pub fn direct(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match (&self.stream).write(buf) {
                Ok(n) => {
                    // Room again: stop hearing about it.
                    self.waiting_for_room = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.waiting_for_room.is_none() {
                        let dup = self.stream.try_clone()?;
                        self.waiting_for_room = Some(register(dup, Interest::WRITABLE)?);
                    }
                    let waiting = self.waiting_for_room.as_ref().expect("set just above");
                    let mut guard = ready!(waiting.poll_write_ready(cx))?;
                    // Try again; a write that still finds no room waits anew.
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_cross_both_ways_and_eof_is_seen() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a_read, mut a_write) = split(a).unwrap();
        let (mut b_read, mut b_write) = split(b).unwrap();
        a_write.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b_write.write_all(b"pong").await.unwrap();
        a_read.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        a_write.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(b_read.read_to_end(&mut rest).await.unwrap(), 0);
    }

    /// A short read forgets readiness without a failing recv. A full read
    /// must not (bytes are still queued), and bytes that arrive after a
    /// short read must still wake the reader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_after_full_and_short_reads() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_a_read, mut a_write) = split(a).unwrap();
        let (mut b_read, _b_write) = split(b).unwrap();
        let within = |secs| std::time::Duration::from_secs(secs);
        let mut chunk = [0u8; 64];

        a_write.write_all(&[1; 100]).await.unwrap();
        let full = b_read.read(&mut chunk).await.unwrap();
        assert_eq!(full, 64, "the first read fills the buffer");
        let rest = tokio::time::timeout(within(5), b_read.read(&mut chunk))
            .await
            .expect("the bytes left after a full read are read without a new write")
            .unwrap();
        assert_eq!(rest, 36, "then the read is short");

        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            a_write.write_all(&[2; 10]).await.unwrap();
            a_write
        });
        let later = tokio::time::timeout(within(5), b_read.read(&mut chunk))
            .await
            .expect("bytes written after a short read wake the reader")
            .unwrap();
        assert_eq!(&chunk[..later], &[2; 10]);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_reader() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_a_read, mut a_write) = split(a).unwrap();
        let (mut b_read, _b_write) = split(b).unwrap();
        let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| i as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            a_write.write_all(&big).await.unwrap();
            a_write
        });
        let mut got = vec![0u8; expected.len()];
        b_read.read_exact(&mut got).await.unwrap();
        assert!(got == expected, "the bytes arrived intact and in order");
        let a_write = writer.await.unwrap();
        assert!(
            a_write.waiting_for_room.is_none(),
            "writability is no longer watched"
        );
    }
}
