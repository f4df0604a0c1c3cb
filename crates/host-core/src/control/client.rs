//! The control socket's client: what `host-core ctl`, the bench and the
//! tests use to drive a running host.

use std::path::{Path, PathBuf};

use interprocess::local_socket::{tokio::prelude::*, tokio::Stream, GenericFilePath, ToFsName};
use wire::{
    control::{ControlReply, ControlRequest, ControlResponse, CONTROL_MAX_FRAME_LEN},
    handshake::{self, Role},
    socket::{SocketReader, SocketWriter},
    CallError, FrameReader, FrameWriter, WireError,
};

/// Why a control request got no answer, or the host's refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no host is running at {} (start one with `host-core run`)", .0.display())]
    NoHost(PathBuf),
    #[error("cannot connect to the host at {}: {source}", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The host answered with an error.
    #[error("{0}")]
    Refused(CallError),
    #[error("the host closed the connection without answering")]
    Closed,
}

/// One connection to a running host's control socket; many requests, one
/// at a time.
#[derive(Debug)]
pub struct ControlClient {
    reader: FrameReader<SocketReader, ControlResponse>,
    writer: FrameWriter<SocketWriter, ControlRequest>,
}

impl ControlClient {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        if !path.exists() {
            return Err(ClientError::NoHost(path.to_owned()));
        }
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let name = path.to_fs_name::<GenericFilePath>().map_err(connect_err)?;
        let stream = Stream::connect(name).await.map_err(connect_err)?;
        let (mut recv, mut send) = wire::socket::split_local(stream).map_err(connect_err)?;
        handshake::connect(&mut recv, &mut send, Role::Control, "").await?;
        Ok(Self {
            reader: FrameReader::with_max_len(recv, CONTROL_MAX_FRAME_LEN),
            writer: FrameWriter::with_max_len(send, CONTROL_MAX_FRAME_LEN),
        })
    }

    pub async fn request(&mut self, request: &ControlRequest) -> Result<ControlReply, ClientError> {
        self.writer.send(request).await?;
        self.next_reply().await
    }

    /// The next reply on this connection (for streams such as `events --follow`).
    pub async fn next_reply(&mut self) -> Result<ControlReply, ClientError> {
        match self.reader.recv().await? {
            Some(ControlResponse::Ok(reply)) => Ok(reply),
            Some(ControlResponse::Err(reason)) => Err(ClientError::Refused(reason)),
            None => Err(ClientError::Closed),
        }
    }
}
