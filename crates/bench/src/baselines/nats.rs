//! NATS request/reply through a local `nats-server`: what one hop costs
//! wasmCloud, with the client wasmCloud uses (`async-nats`).
//!
//! The requester's connection runs on a current-thread runtime of its own
//! that only runs while a request is timed, on the thread that asks: as a
//! blocking client would, it costs no other thread's wake-up, and nothing
//! else of the bench runs meanwhile. The responder, which echoes, has a
//! thread and a runtime of its own, so it idles between requests as a
//! provider does.

use std::{
    future::Future,
    path::Path,
    process::{Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures::StreamExt;
use tokio::{runtime::Runtime, sync::oneshot};

use crate::harness::{dies_with_bench, Baseline};

const SUBJECT: &str = "bench.echo";

/// A responder or server that stops answering fails the baseline instead
/// of hanging the bench.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Request/reply through a local nats-server: a requester, and a responder
/// on its own thread that echoes. On drop the requester's runtime stops,
/// then the responder, then the server is killed and reaped (on every
/// error path of `start` too).
pub(crate) struct NatsEcho {
    // Dropped in this order: the server outlives the clients.
    requester: Client,
    runtime: LocalRuntime,
    _responder: Responder,
    _server: Baseline,
}

impl NatsEcho {
    pub(crate) fn start() -> Result<Self> {
        // The server picks its own port (-p -1) and writes it to a ports
        // file: a port picked here and handed over could be taken between.
        let ports_dir = std::env::temp_dir().join(format!("bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&ports_dir)?;
        // Stopped when dropped, on every error path below too.
        let mut server = Baseline(
            dies_with_bench(
                Command::new("nats-server")
                    .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
                    .arg(&ports_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .spawn()
            .map_err(|_| anyhow!("nats-server is not installed (apt-get install nats-server)"))?,
        );
        let port = listening_port(&mut server.0, &ports_dir);
        let _ = std::fs::remove_dir_all(&ports_dir);
        let port = port?;
        let responder = Responder::start(port)?;
        let runtime = LocalRuntime(Some(current_thread()?));
        let requester = runtime.block_on(connect(port))?;
        let mut echo = Self {
            requester,
            runtime,
            _responder: responder,
            _server: server,
        };
        // Warms up the connection and the reply subscription the client
        // makes on its first request.
        for _ in 0..50 {
            echo.round_trip()?;
        }
        Ok(echo)
    }

    /// One request answered; blocks the calling thread.
    pub(crate) fn round_trip(&mut self) -> Result<Duration> {
        self.round_trips(1)
    }

    /// `n` requests, each sent when the last was answered: the time for all.
    pub(crate) fn round_trips(&mut self, n: u32) -> Result<Duration> {
        let payload = Bytes::from_static(&[7u8; 16]);
        let requester = &self.requester;
        self.runtime.block_on(async move {
            let t = Instant::now();
            for _ in 0..n {
                requester
                    .request(SUBJECT, payload.clone())
                    .await
                    .context("NATS request")?;
            }
            Ok(t.elapsed())
        })
    }
}

/// A current-thread runtime that can be dropped anywhere, the bench's own
/// runtime included (where dropping a runtime the usual way, which
/// blocks, is refused).
struct LocalRuntime(Option<Runtime>);

impl LocalRuntime {
    /// Runs `future` on this runtime, on this thread.
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        let runtime = self.0.as_ref().expect("the runtime is kept until drop");
        outside_runtime(|| runtime.block_on(future))
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `f`, which blocks, on this thread: leaves the bench's runtime for
/// it when called from one (a runtime cannot be entered from another).
fn outside_runtime<T>(f: impl FnOnce() -> T) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn current_thread() -> Result<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The echoing side, on a thread and a runtime of its own; stopped and
/// joined when dropped (its client would otherwise reconnect forever once
/// the server is gone).
struct Responder {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Responder {
    /// Subscribed and ready to answer once this returns.
    fn start(port: u16) -> Result<Self> {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nats-responder".into())
            .spawn(move || {
                current_thread()?.block_on(async move {
                    let subscribed = async {
                        let client = connect(port).await?;
                        let subscriber = client.subscribe(SUBJECT).await?;
                        // The server has the subscription before any request.
                        client.flush().await?;
                        anyhow::Ok((client, subscriber))
                    };
                    let (client, mut subscriber) = match subscribed.await {
                        Ok(subscribed) => {
                            let _ = ready_tx.send(Ok(()));
                            subscribed
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                            return Err(e);
                        }
                    };
                    loop {
                        tokio::select! {
                            _ = &mut stopped => return Ok(()),
                            message = subscriber.next() => {
                                let Some(message) = message else { return Ok(()) };
                                if let Some(reply) = message.reply {
                                    client.publish(reply, message.payload).await?;
                                }
                            }
                        }
                    }
                })
            })?;
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e.context("the NATS responder")),
            Err(_) => bail!("the NATS responder did not subscribe within 10 s"),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects, retrying while the server starts.
async fn connect(port: u16) -> Result<Client> {
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let options = ConnectOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .ignore_discovered_servers();
        match options.connect(url.as_str()).await {
            Ok(client) => return Ok(client),
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {url}")),
        }
    }
}

/// The client port from the server's ports file, once it is written.
fn listening_port(server: &mut std::process::Child, ports_dir: &Path) -> Result<u16> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if let Some(status) = server.try_wait()? {
            bail!("nats-server exited ({status}) before it listened");
        }
        // {"nats":["nats://127.0.0.1:44103"]}; a half-written file is
        // read again on the next round.
        let port = std::fs::read_dir(ports_dir)?
            .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
            .find_map(|text| {
                let ports: serde_json::Value = serde_json::from_slice(&text).ok()?;
                let url = ports["nats"].get(0)?.as_str()?;
                url.rsplit_once(':')?.1.parse::<u16>().ok()
            });
        if let Some(port) = port {
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nats-server did not write its port within 5 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As in the bench: run on, and dropped inside, a multi-threaded
    /// runtime's `block_on`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_runtime_runs_and_drops_inside_another_runtime() {
        let runtime = LocalRuntime(Some(current_thread().unwrap()));
        let spawned = runtime.block_on(async { tokio::spawn(async { 7 }).await.unwrap() });
        assert_eq!(spawned, 7);
        drop(runtime);
    }
}
