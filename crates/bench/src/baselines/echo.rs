//! The raw echo: the same framing as a control-socket call (`wire`,
//! MessagePack) over a plain tokio Unix socket, to an echo server in this
//! process or another, directly or through a bare relay process.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use wire::{
    control::{ControlReply, ControlRequest, ControlResponse},
    Bytes, FrameReader, FrameWriter,
};

/// The baseline: a raw tokio Unix-socket MessagePack echo, same framing.
#[expect(
    clippy::disallowed_methods,
    reason = "the baseline is a raw tokio socket (BENCHMARKS.md, \"Actor call\")"
)]
pub(crate) async fn raw_echo_server(path: PathBuf) -> Result<()> {
    let listener = tokio::net::UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (r, w) = stream.into_split();
            let mut reader = FrameReader::<_, ControlRequest>::new(r);
            let mut writer = FrameWriter::<_, ControlResponse>::new(w);
            while let Ok(Some(ControlRequest::Call { payload, .. })) = reader.recv().await {
                if writer
                    .send(&ControlResponse::Ok(ControlReply::CallResult(payload)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Passes each request on to the echo at `echo` and its answer back, over
/// one echo connection per client connection: decoding and re-encoding each
/// frame, as any router must, and nothing else.
pub(crate) async fn raw_relay_server(path: PathBuf, echo: PathBuf) -> Result<()> {
    let listener = tokio::net::UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let echo = echo.clone();
        tokio::spawn(async move {
            let Ok((r, w)) = stream.into_std().and_then(wire::socket::split) else {
                return;
            };
            let mut from_client = FrameReader::<_, ControlRequest>::new(r);
            let mut to_client = FrameWriter::<_, ControlResponse>::new(w);
            let Ok((r, w)) =
                std::os::unix::net::UnixStream::connect(&echo).and_then(wire::socket::split)
            else {
                return;
            };
            let mut from_echo = FrameReader::<_, ControlResponse>::new(r);
            let mut to_echo = FrameWriter::<_, ControlRequest>::new(w);
            while let Ok(Some(request)) = from_client.recv().await {
                if to_echo.send(&request).await.is_err() {
                    return;
                }
                let Ok(Some(response)) = from_echo.recv().await else {
                    return;
                };
                if to_client.send(&response).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "the baseline is a raw tokio socket (BENCHMARKS.md, \"Actor call\")"
)]
async fn raw_client(
    path: &Path,
) -> Result<(
    FrameReader<tokio::net::unix::OwnedReadHalf, ControlResponse>,
    FrameWriter<tokio::net::unix::OwnedWriteHalf, ControlRequest>,
)> {
    let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
    Ok((FrameReader::new(r), FrameWriter::new(w)))
}

/// `n` sequential calls (after 20 to warm up) to the raw echo at `path`.
pub(crate) async fn raw_echo_calls(
    path: PathBuf,
    payload: Vec<u8>,
    n: usize,
) -> Result<Vec<Duration>> {
    let (mut r, mut w) = raw_client(&path).await?;
    let request = ControlRequest::Call {
        key: "raw".into(),
        operation: "Echo.Echo".into(),
        payload: Bytes::from(payload),
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        w.send(&request).await?;
        r.recv().await?.context("raw echo closed")?;
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}
