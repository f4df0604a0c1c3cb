//! The bare hyper server the HTTP figures are compared with: the same
//! `Hello World` with nothing behind it.

use anyhow::Result;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Response};

/// Serves on `port` until killed (`bench --serve-hyper PORT`).
pub(crate) fn serve_bare_hyper(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                        bytes::Bytes::from_static(b"Hello World"),
                    )))
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
