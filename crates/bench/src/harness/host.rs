//! A host started in the bench's work directory, and a client of its
//! control socket.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use host_core::control::ControlClient;
use wire::{
    control::{Artifact, ControlReply, ControlRequest},
    Bytes,
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
        Self::start_with(work, name, &[])
    }

    /// [`Host::start`] with extra `run` arguments.
    pub(crate) fn start_with(work: &Work, name: &str, extra: &[&str]) -> Result<(Self, Duration)> {
        let state = work.dir.join(name);
        let started = Instant::now();
        let child = dies_with_bench(
            Command::new(bin_dir()?.join("host-core"))
                .args(["run", "--state-dir"])
                .arg(&state)
                .args(["--log-level", "warn"])
                .args(extra)
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

/// The host library's control client, with the requests the bench makes
/// as typed calls: what `host-core ctl` does, without a process per call.
pub(crate) struct Client(ControlClient);

impl Client {
    pub(crate) async fn connect(path: &Path) -> Result<Self> {
        Ok(Self(ControlClient::connect(path).await?))
    }

    async fn request(&mut self, request: &ControlRequest) -> Result<ControlReply> {
        Ok(self.0.request(request).await?)
    }

    pub(crate) async fn start_actor(&mut self, path: &Path, count: u32) -> Result<String> {
        let wasm = Bytes::from(std::fs::read(path)?);
        self.start_actor_from(Artifact::Bytes(wasm), count).await
    }

    /// Starts an actor from bytes, a path or an OCI reference.
    pub(crate) async fn start_actor_from(&mut self, actor: Artifact, count: u32) -> Result<String> {
        match self
            .request(&ControlRequest::StartActor { actor, count })
            .await?
        {
            ControlReply::ActorStarted { key } => Ok(key),
            other => unexpected("start-actor", &other),
        }
    }

    pub(crate) async fn stop_actor(&mut self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.request(&ControlRequest::StopActor { key }).await?;
        Ok(())
    }

    pub(crate) async fn scale_actor(&mut self, key: &str, count: u32) -> Result<()> {
        let key = key.to_owned();
        self.request(&ControlRequest::ScaleActor { key, count })
            .await?;
        Ok(())
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
            other => unexpected("call", &other),
        }
    }

    /// Starts the provider in archive `par` under link name `default`.
    pub(crate) async fn start_provider(&mut self, par: &Path) -> Result<String> {
        match self
            .request(&ControlRequest::StartProvider {
                archive: Artifact::Path(par.display().to_string()),
                link_name: "default".into(),
                config_json: "{}".into(),
            })
            .await?
        {
            ControlReply::ProviderStarted { key } => Ok(key),
            other => unexpected("start-provider", &other),
        }
    }

    pub(crate) async fn stop_provider(&mut self, key: &str) -> Result<()> {
        self.request(&ControlRequest::StopProvider {
            key: key.to_owned(),
            link_name: "default".into(),
        })
        .await?;
        Ok(())
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
            other => unexpected("inventory", &other),
        }
    }
}

fn unexpected<T>(request: &str, reply: &ControlReply) -> Result<T> {
    bail!("unexpected reply to {request}: {reply:?}")
}
