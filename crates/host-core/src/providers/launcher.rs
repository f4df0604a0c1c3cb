//! The `provider-launcher` process: one life after another under the
//! supervision loop, its channel, and what its death means for providers.

use std::{sync::Arc, time::Duration};

use anyhow::anyhow;
use interprocess::local_socket::tokio::Listener;
use tokio::sync::watch;
use wire::calls::CallTable;
use wire::outbox::Outbox;
use wire::socket::SocketReader;
use wire::{
    control::ProcessState,
    handshake::Role,
    launcher::{Confinement, FromLauncher, LauncherRequest, OutputStream, ToLauncher},
    CallError, CallResult, FrameReader,
};

use super::{ProviderId, ProviderSupervisor};
use crate::{
    child::{self, Connected},
    supervise::{self, Died, Exit, FirstReady, Lifetime},
};

/// How long a launcher asked to stop has to end its providers and exit.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the channel may stay open after the launcher's reader ended,
/// waiting for the exit status that says why.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(200);

/// One live connection to one launcher process.
pub(crate) struct LauncherConn {
    tx: Outbox<ToLauncher>,
    calls: CallTable<u32>,
}

impl LauncherConn {
    pub(crate) async fn request(
        &self,
        request: LauncherRequest,
        timeout: Duration,
    ) -> CallResult<u32> {
        self.calls
            .call("the provider launcher", timeout, |id| {
                self.tx
                    .send_now(ToLauncher::Request { id, request })
                    .map_err(|e| e.into_call_error("request"))
            })
            .await
    }
}

pub(crate) struct LauncherLife {
    pub(crate) supervisor: Arc<ProviderSupervisor>,
    pub(crate) listener: Listener,
}

impl Lifetime for LauncherLife {
    fn name(&self) -> &'static str {
        "provider-launcher"
    }

    async fn run_once(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        first_ready: &mut Option<FirstReady>,
    ) -> Result<(), Died> {
        let this = &self.supervisor;
        let status = &this.launcher_status;
        status.update(|s| s.state = ProcessState::Starting);
        let Connected {
            mut child,
            reader,
            writer,
        } = child::spawn_and_accept(
            &self.listener,
            &this.settings.launcher_binary,
            &this.settings.launcher_socket,
            "PROVIDER_LAUNCHER_TOKEN",
            Role::Launcher,
        )
        .await?;
        let restarts = status.get().restarts;
        status.update(|s| {
            s.pid = child.id();
            s.state = ProcessState::Running;
        });
        if restarts > 0 {
            this.events.publish(
                "process_restarted",
                serde_json::json!({"name": self.name(), "pid": child.id(), "restarts": restarts}),
            );
        }
        let (tx, mut writer_task) = child::outbox(writer, "the launcher");
        let conn = Arc::new(LauncherConn {
            tx,
            calls: CallTable::default(),
        });
        let mut reader_task = tokio::spawn(this.clone().launcher_read_loop(reader, conn.clone()));
        this.launcher.send_replace(Some(conn.clone()));
        if let Some(tx) = first_ready.take() {
            let _ = tx.send(Ok(()));
        } else {
            // A new launcher after a crash: bring every provider back.
            let ids: Vec<ProviderId> = this.providers.lock().keys().cloned().collect();
            for id in ids {
                let this = this.clone();
                tokio::spawn(async move { this.relaunch(id).await });
            }
        }
        let outcome = tokio::select! {
            status = child.wait() => Err(match status {
                Ok(status) => anyhow!("the launcher {}", Exit::from_status(status)),
                Err(e) => e.into(),
            }),
            _ = &mut reader_task => match tokio::time::timeout(EXIT_STATUS_WAIT, child.wait()).await {
                Ok(Ok(status)) => Err(anyhow!("the launcher {}", Exit::from_status(status))),
                _ => Err(anyhow!("the launcher's channel broke")),
            },
            // A write to the launcher failed: the channel is half dead.
            _ = &mut writer_task => Err(anyhow!("writing to the launcher failed")),
            _ = supervise::stopped(shutdown) => Ok(()),
        };
        if outcome.is_ok() {
            this.stop_all(&conn).await;
        }
        this.launcher.send_replace(None);
        conn.calls
            .fail_all(CallError::unavailable("the provider launcher is gone"));
        reader_task.abort();
        writer_task.abort();
        drop(conn);
        match outcome {
            Ok(()) => {
                // Closing the channel makes the launcher end what is left and exit.
                if tokio::time::timeout(STOP_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                Ok(())
            }
            Err(reason) => {
                let _ = child.kill().await;
                this.launcher_died();
                Err(reason.into())
            }
        }
    }
}

impl ProviderSupervisor {
    /// The launcher died: its providers died with it (parent-death signal).
    /// Make sure of it by their process groups, then mark them for relaunch.
    fn launcher_died(&self) {
        let mut providers = self.providers.lock();
        for record in providers.values_mut() {
            if let Some(pid) = record.pid.take() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Some(conn) = record.conn.take() {
                conn.calls.fail_all(CallError::unavailable(
                    "the provider died with its launcher",
                ));
            }
            if record.state != ProcessState::Failed {
                record.state = ProcessState::Restarting;
            }
        }
    }

    async fn launcher_read_loop(self: Arc<Self>, reader: SocketReader, conn: Arc<LauncherConn>) {
        self.read_launcher(reader, &conn).await;
        // Nothing more will be answered: fail what waits at once rather than
        // at each call's timeout (a shutdown would otherwise sit them out).
        conn.calls.fail_all(CallError::unavailable(
            "the provider launcher's channel closed",
        ));
    }

    async fn read_launcher(self: &Arc<Self>, reader: SocketReader, conn: &LauncherConn) {
        let mut reader = FrameReader::<_, FromLauncher>::new(reader);
        loop {
            match reader.recv().await {
                Ok(Some(FromLauncher::Reply { id, result })) => {
                    conn.calls.complete(id, result);
                }
                Ok(Some(FromLauncher::Exited {
                    instance,
                    pid,
                    code,
                    signal,
                })) => self
                    .clone()
                    .on_exit(instance, pid, Exit::from_parts(code, signal)),
                Ok(Some(FromLauncher::Confined {
                    instance,
                    confinement,
                })) => {
                    if let Confinement::Partial { reason } = confinement {
                        let key = self.key_of(instance).unwrap_or_else(|| "?".into());
                        tracing::warn!(provider = %key, "providers run without a Landlock sandbox: {reason}");
                    }
                }
                Ok(Some(FromLauncher::Output {
                    instance,
                    stream,
                    line,
                })) => {
                    let key = self.key_of(instance).unwrap_or_else(|| "?".into());
                    match stream {
                        OutputStream::Stdout => tracing::info!(provider = %key, "{line}"),
                        OutputStream::Stderr => tracing::info!(provider = %key, "{line}"),
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("bad frame from the launcher: {e}");
                    return;
                }
            }
        }
    }

    /// The live launcher connection, waiting up to `timeout` while the
    /// launcher (re)starts.
    pub(crate) async fn launcher_conn(&self, timeout: Duration) -> CallResult<Arc<LauncherConn>> {
        let mut rx = self.launcher.subscribe();
        let wait = async { rx.wait_for(|c| c.is_some()).await.map(|c| c.clone()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Some(conn))) => Ok(conn),
            _ => Err(CallError::unavailable(
                "the provider launcher is not running",
            )),
        }
    }
}
