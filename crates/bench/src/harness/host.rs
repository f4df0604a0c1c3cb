//! A host started in the bench's work directory, and a client of its
//! control socket.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use interprocess::local_socket::{tokio::prelude::*, tokio::Stream, GenericFilePath, ToFsName};
use wire::{
    control::{ControlReply, ControlRequest, ControlResponse, CONTROL_MAX_FRAME_LEN},
    handshake::{self, Role},
    Bytes, FrameReader, FrameWriter,
};

use super::{bin_dir, dies_with_bench, Work};

/// `host-core run` in its own state directory under the work directory;
/// killed and reaped when dropped.
pub(crate) struct Host {
    pub(crate) child: Child,
    pub(crate) state: PathBuf,
}

impl Host {
    /// A started host, and how long it took until its control socket
    /// accepted.
    pub(crate) fn start(work: &Work, name: &str) -> Result<(Self, Duration)> {
        let state = work.dir.join(name);
        let started = Instant::now();
        let child = dies_with_bench(
            Command::new(bin_dir()?.join("host-core"))
                .args(["run", "--state-dir"])
                .arg(&state)
                .args(["--log-level", "warn"])
                .env("WASMHOST_KEYS_DIR", &work.keys)
                .stdin(Stdio::null()),
        )
        .spawn()?;
        let socket = state.join("host.sock");
        // The control socket listens once the worker and launcher are up.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the host did not start");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok((Self { child, state }, started.elapsed()))
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.state.join("host.sock")
    }

    pub(crate) async fn client(&self) -> Result<Client> {
        Client::connect(&self.socket()).await
    }

    pub(crate) fn pid_of(&self, inventory: &serde_json::Value, name: &str) -> Option<i32> {
        inventory["processes"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?["pid"]
            .as_i64()
            .map(|p| p as i32)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control-socket client: what `host-core ctl` does, without a process per call.
pub(crate) struct Client {
    reader: FrameReader<tokio::io::ReadHalf<Stream>, ControlResponse>,
    writer: FrameWriter<tokio::io::WriteHalf<Stream>, ControlRequest>,
}

impl Client {
    #[allow(clippy::disallowed_methods)] // a plain tokio client, like the raw echo client it is compared with
    pub(crate) async fn connect(path: &Path) -> Result<Self> {
        let stream = Stream::connect(path.to_fs_name::<GenericFilePath>()?).await?;
        let (mut r, mut w) = tokio::io::split(stream);
        handshake::connect(&mut r, &mut w, Role::Control, "").await?;
        Ok(Self {
            reader: FrameReader::with_max_len(r, CONTROL_MAX_FRAME_LEN),
            writer: FrameWriter::with_max_len(w, CONTROL_MAX_FRAME_LEN),
        })
    }

    pub(crate) async fn request(&mut self, request: &ControlRequest) -> Result<ControlReply> {
        self.writer.send(request).await?;
        match self.reader.recv().await? {
            Some(ControlResponse::Ok(reply)) => Ok(reply),
            Some(ControlResponse::Err(e)) => Err(anyhow!(e)),
            None => Err(anyhow!("the host hung up")),
        }
    }

    pub(crate) async fn start_actor(&mut self, path: &Path, count: u32) -> Result<String> {
        match self
            .request(&ControlRequest::StartActor {
                wasm: Bytes::from(std::fs::read(path)?),
                count,
            })
            .await?
        {
            ControlReply::ActorStarted { key } => Ok(key),
            _ => bail!("unexpected reply"),
        }
    }

    pub(crate) async fn call(
        &mut self,
        key: &str,
        operation: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        match self
            .request(&ControlRequest::Call {
                key: key.to_owned(),
                operation: operation.to_owned(),
                payload: Bytes::from(payload.to_vec()),
            })
            .await?
        {
            ControlReply::CallResult(bytes) => Ok(bytes.into_vec()),
            _ => bail!("unexpected reply"),
        }
    }

    pub(crate) async fn start_provider(&mut self, par: &Path) -> Result<String> {
        match self
            .request(&ControlRequest::StartProvider {
                path: par.display().to_string(),
                link_name: "default".into(),
                config_json: "{}".into(),
            })
            .await?
        {
            ControlReply::ProviderStarted { key } => Ok(key),
            _ => bail!("unexpected reply"),
        }
    }

    pub(crate) async fn link(
        &mut self,
        actor: &str,
        provider: &str,
        contract: &str,
        values: &[(&str, String)],
    ) -> Result<()> {
        self.request(&ControlRequest::LinkPut(wire::provider::Link {
            actor_id: actor.to_owned(),
            provider_id: provider.to_owned(),
            contract_id: contract.to_owned(),
            link_name: "default".into(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }))
        .await?;
        Ok(())
    }

    pub(crate) async fn inventory(&mut self) -> Result<serde_json::Value> {
        match self.request(&ControlRequest::Inventory).await? {
            ControlReply::Inventory(inv) => Ok(serde_json::to_value(&inv)?),
            _ => bail!("unexpected reply"),
        }
    }
}
