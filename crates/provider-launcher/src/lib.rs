//! `provider-launcher`: the only process of the host that forks. It starts
//! native capability providers for `host-core`, each in its own process group
//! (and cgroup where available), relays their output, stops them, and reaps
//! everything it is the parent or subreaper of. When `host-core` goes away,
//! by any means, every provider and descendant goes with it.
//!
//! [`run`] is the server loop over one channel (after the handshake); tests
//! drive it in memory.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use wire::launcher::{
    Confinement, FromLauncher, InstanceId, LaunchSpec, LauncherRequest, OutputStream, ToLauncher,
};
use wire::worker::CallId;
use wire::{FrameReader, FrameWriter, WireError};

mod cgroup;
mod image;
mod procfs;
mod sandbox;
mod spawn;

use cgroup::Cgroups;
pub use image::CACHE_CAPACITY;
use image::{Image, SharedImages};
use spawn::{ChildShared, ForkJob, Global, Spawned};

/// Longest line relayed as one [`FromLauncher::Output`]; longer ones are cut.
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// How long the launcher waits for processes to die after SIGKILL before it
/// reports a stop as failed.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("launcher set-up failed: {0}")]
    Setup(#[from] std::io::Error),
}

/// Tunables of [`run_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Put each provider in a cgroup of its own when cgroup v2 is usable.
    pub cgroups: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { cgroups: true }
    }
}

/// Serves `host-core` on an established channel until it closes (or sends
/// garbage, which is an error), then kills and reaps every provider.
pub async fn run<R, W>(reader: R, writer: W) -> Result<(), LauncherError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    run_with(reader, writer, Options::default(), std::future::pending()).await
}

/// [`run`] with options, also ending (cleanly) when `shutdown` completes,
/// e.g. on SIGTERM from the parent-death signal.
pub async fn run_with<R, W, F>(
    reader: R,
    writer: W,
    options: Options,
    shutdown: F,
) -> Result<(), LauncherError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = ()>,
{
    let global = spawn::global()?;
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let cgroups = if options.cgroups {
        Cgroups::setup()
    } else {
        None
    };

    // Reading a frame is not cancel-safe, so it has a task of its own.
    let (req_tx, mut req_rx) = mpsc::channel::<Result<Option<ToLauncher>, WireError>>(8);
    let reader_task = tokio::spawn(async move {
        let mut reader = FrameReader::<_, ToLauncher>::new(reader);
        loop {
            let msg = reader.recv().await;
            let end = !matches!(msg, Ok(Some(_)));
            if req_tx.send(msg).await.is_err() || end {
                break;
            }
        }
    });

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (output_tx, mut output_rx) = mpsc::channel(256);
    let mut state = State {
        global,
        cgroups,
        images: SharedImages::default(),
        providers: HashMap::new(),
        events: events_tx,
        output: output_tx,
        tasks: JoinSet::new(),
    };
    let mut writer = FrameWriter::<_, FromLauncher>::new(writer);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);

    let result: Result<(), LauncherError> = loop {
        // Not biased: a chatty provider must not starve requests or events.
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("asked to shut down");
                break Ok(());
            }
            _ = sigchld.recv() => global.reap(),
            Some(out) = output_rx.recv() => {
                if let Err(e) = writer.send(&out).await {
                    break Err(e.into());
                }
            }
            Some(event) = events_rx.recv() => {
                // Output already read goes first, so that a provider's last
                // lines come before the report of its exit.
                let mut msgs = Vec::new();
                while let Ok(out) = output_rx.try_recv() {
                    msgs.push(out);
                }
                msgs.extend(state.on_event(event));
                let mut failed = None;
                for msg in msgs {
                    if let Err(e) = writer.send(&msg).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(e.into());
                }
            }
            msg = req_rx.recv() => match msg {
                Some(Ok(Some(ToLauncher::Request { id, request }))) => {
                    if let Some(reply) = state.on_request(id, request) {
                        if let Err(e) = writer.send(&reply).await {
                            break Err(e.into());
                        }
                    }
                }
                Some(Ok(None)) | None => {
                    tracing::info!("host-core closed the channel");
                    break Ok(());
                }
                Some(Err(e)) => {
                    tracing::error!("bad message from host-core: {e}");
                    break Err(e.into());
                }
            },
            _ = tick.tick() => global.reap(),
        }
    };
    reader_task.abort();
    state.shutdown(&mut events_rx).await;
    result
}

/// What a run loop hears from its helpers.
#[derive(Debug)]
pub(crate) enum Event {
    /// The fork thread answered a launch.
    Launched {
        id: CallId,
        instance: InstanceId,
        result: Result<Spawned, String>,
    },
    /// The reaper waited for a provider's pid.
    Exited {
        instance: InstanceId,
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A stop (or the clean-up after an exit) finished.
    Stopped {
        instance: InstanceId,
        replies: Vec<CallId>,
        result: Result<u32, String>,
    },
}

#[derive(Debug)]
struct Provider {
    /// `None` while the fork thread is at work.
    shared: Option<Arc<ChildShared>>,
    cgroup: Option<PathBuf>,
    /// An exit the reaper saw before the launch was answered.
    early_exit: Option<(i32, Option<i32>, Option<i32>)>,
    /// Stops asked for while starting, or while a stop or clean-up runs.
    pending_stops: Vec<(CallId, u64)>,
    /// A stop or clean-up task is running.
    stopping: bool,
    /// What it runs, kept in the image cache while it does.
    image: Option<Arc<Image>>,
}

struct State {
    global: &'static Global,
    cgroups: Option<Cgroups>,
    /// Verified binaries in sealed memfds, by hash.
    images: SharedImages,
    providers: HashMap<InstanceId, Provider>,
    events: mpsc::UnboundedSender<Event>,
    output: mpsc::Sender<FromLauncher>,
    tasks: JoinSet<()>,
}

/// A launch or stop that failed is the provider's fault (its binary did
/// not start, its group did not stop): the host tells its caller why.
fn reply(id: CallId, result: Result<u32, String>) -> FromLauncher {
    FromLauncher::Reply {
        id,
        result: result.map_err(wire::CallError::provider_fault),
    }
}

impl State {
    fn on_request(&mut self, id: CallId, request: LauncherRequest) -> Option<FromLauncher> {
        match request {
            LauncherRequest::Launch(spec) => self.launch(id, spec),
            LauncherRequest::Stop { instance, grace_ms } => {
                let Some(p) = self.providers.get_mut(&instance) else {
                    // Nothing of it runs (it exited and was cleaned up).
                    return Some(reply(id, Ok(0)));
                };
                p.pending_stops.push((id, grace_ms));
                if p.shared.is_some() && !p.stopping {
                    self.start_stop(instance, true);
                }
                None
            }
        }
    }

    fn launch(&mut self, id: CallId, spec: LaunchSpec) -> Option<FromLauncher> {
        let LaunchSpec {
            instance,
            provider_key,
            link_name,
            binary,
            binary_sha256,
            data_dir,
            env,
            stdin,
        } = spec;
        if self.providers.contains_key(&instance) {
            return Some(reply(
                id,
                Err(format!("provider instance {instance} is already running")),
            ));
        }
        tracing::info!(instance, %provider_key, %link_name, %binary, "launching provider");
        let cgroup = self.cgroups.as_ref().and_then(|c| c.create(instance));
        self.providers.insert(
            instance,
            Provider {
                shared: None,
                cgroup: cgroup.as_ref().map(|(dir, _)| dir.clone()),
                early_exit: None,
                pending_stops: Vec::new(),
                stopping: false,
                image: None,
            },
        );
        let events = self.events.clone();
        let images = self.images.clone();
        let global = self.global;
        let stdin = stdin.into_vec();
        self.tasks.spawn(async move {
            let image = match verified_image(&images, &binary, &binary_sha256).await {
                Ok(image) => image,
                Err(e) => {
                    let _ = events.send(Event::Launched {
                        id,
                        instance,
                        result: Err(e),
                    });
                    return;
                }
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            global.submit(ForkJob {
                instance,
                binary,
                image,
                data_dir,
                env,
                cgroup,
                events: events.clone(),
                reply: tx,
            });
            let mut result = rx
                .await
                .unwrap_or_else(|_| Err("the launcher's fork thread is gone".into()));
            let stdin_fd = result.as_mut().ok().and_then(|s| s.stdin.take());
            let _ = events.send(Event::Launched {
                id,
                instance,
                result,
            });
            // Fed from here, after the reply, so the run loop never waits
            // on a pipe.
            if let Some(fd) = stdin_fd {
                write_stdin(fd, stdin).await;
            }
        });
        None
    }

    fn on_event(&mut self, event: Event) -> Vec<FromLauncher> {
        let mut out = Vec::new();
        match event {
            Event::Launched {
                id,
                instance,
                result: Err(e),
            } => {
                tracing::warn!(instance, "launch failed: {e}");
                if let Some(p) = self.providers.remove(&instance) {
                    if let Some(dir) = p.cgroup {
                        // The child is on its way out (it exits right after
                        // reporting the failure): remove its cgroup once it
                        // is empty.
                        self.tasks.spawn(async move { remove_cgroup(&dir).await });
                    }
                    out.extend(p.pending_stops.iter().map(|(id, _)| reply(*id, Ok(0))));
                }
                out.insert(0, reply(id, Err(e)));
            }
            Event::Launched {
                id,
                instance,
                result: Ok(spawned),
            } => {
                let Spawned {
                    shared,
                    stdout,
                    stderr,
                    confinement,
                    image,
                    ..
                } = spawned;
                let pid = shared.pid;
                match &confinement {
                    Confinement::Landlock { abi } => {
                        tracing::info!(
                            instance,
                            pid,
                            abi,
                            "provider started in its Landlock sandbox"
                        )
                    }
                    Confinement::Partial { reason } => {
                        tracing::warn!(
                            instance,
                            pid,
                            "providers run without a Landlock sandbox: {reason}"
                        )
                    }
                }
                out.push(FromLauncher::Confined {
                    instance,
                    confinement,
                });
                out.push(reply(id, Ok(pid as u32)));
                self.tasks.spawn(relay_lines(
                    stdout,
                    instance,
                    OutputStream::Stdout,
                    self.output.clone(),
                ));
                self.tasks.spawn(relay_lines(
                    stderr,
                    instance,
                    OutputStream::Stderr,
                    self.output.clone(),
                ));
                let Some(p) = self.providers.get_mut(&instance) else {
                    // Cannot happen: the entry is only removed once launched.
                    return out;
                };
                p.shared = Some(shared);
                p.image = Some(image);
                if let Some((epid, code, signal)) = p.early_exit.take() {
                    if epid == pid {
                        out.extend(self.exited(instance, pid, code, signal));
                        return out;
                    }
                }
                if !p.pending_stops.is_empty() {
                    self.start_stop(instance, true);
                }
            }
            Event::Exited {
                instance,
                pid,
                code,
                signal,
            } => {
                let Some(p) = self.providers.get_mut(&instance) else {
                    return out;
                };
                match &p.shared {
                    None => p.early_exit = Some((pid, code, signal)),
                    Some(s) if s.pid == pid => out.extend(self.exited(instance, pid, code, signal)),
                    Some(_) => {}
                }
            }
            Event::Stopped {
                instance,
                replies,
                result,
            } => {
                out.extend(replies.iter().map(|id| reply(*id, result.clone())));
                let again = match self.providers.get_mut(&instance) {
                    Some(p) if !p.pending_stops.is_empty() => {
                        p.stopping = false;
                        true
                    }
                    _ => {
                        self.providers.remove(&instance);
                        false
                    }
                };
                if again {
                    self.start_stop(instance, true);
                }
            }
        }
        out
    }

    /// The provider's pid was reaped: report it, and clean up what is left
    /// of it unless a stop is already doing so.
    fn exited(
        &mut self,
        instance: InstanceId,
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
    ) -> Option<FromLauncher> {
        tracing::info!(instance, pid, ?code, ?signal, "provider exited");
        if self.providers.get(&instance).is_some_and(|p| !p.stopping) {
            self.start_stop(instance, false);
        }
        Some(FromLauncher::Exited {
            instance,
            pid: pid as u32,
            code,
            signal,
        })
    }

    /// Starts the task that stops `instance` (or cleans up after it),
    /// answering every pending stop request when done.
    fn start_stop(&mut self, instance: InstanceId, term: bool) {
        let Some(p) = self.providers.get_mut(&instance) else {
            return;
        };
        let Some(shared) = p.shared.clone() else {
            return;
        };
        p.stopping = true;
        let stops = std::mem::take(&mut p.pending_stops);
        let grace = stops.iter().map(|(_, g)| *g).min().unwrap_or(0);
        let replies = stops.into_iter().map(|(id, _)| id).collect();
        let global = self.global;
        let events = self.events.clone();
        self.tasks.spawn(async move {
            let result = stop(global, &shared, term, Duration::from_millis(grace)).await;
            let _ = events.send(Event::Stopped {
                instance,
                replies,
                result,
            });
        });
    }

    /// The host is gone: kill every provider and descendant, reap them.
    async fn shutdown(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        let deadline = Instant::now() + Duration::from_secs(2);
        // Launches in flight finish first, so that we can kill them too.
        while self.providers.values().any(|p| p.shared.is_none()) && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => drop(self.on_event(event)),
                _ => break,
            }
        }
        self.tasks.abort_all();
        let shared: Vec<_> = self
            .providers
            .values()
            .filter_map(|p| p.shared.clone())
            .collect();
        if !shared.is_empty() {
            tracing::info!("killing {} provider(s)", shared.len());
        }
        for s in &shared {
            s.stopping.store(true, Ordering::SeqCst);
            signal_group(s, Signal::SIGKILL);
        }
        if let Some(c) = &self.cgroups {
            cgroup::kill_tree(&c.base);
        }
        let gone = || {
            shared
                .iter()
                .all(|s| s.reaped.load(Ordering::SeqCst) && !group_alive(s.pid))
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            self.global.reap();
            let strays = procfs::kill_orphans(self.global);
            let cg_empty = self
                .cgroups
                .as_ref()
                .is_none_or(|c| !cgroup::populated(&c.base));
            if (strays == 0 && gone() && cg_empty) || Instant::now() >= deadline {
                break;
            }
            for s in &shared {
                signal_group(s, Signal::SIGKILL);
            }
            tokio::time::sleep(POLL).await;
        }
        self.global.reap();
        if let Some(c) = &self.cgroups {
            remove_cgroup(&c.base).await;
        }
        self.providers.clear();
    }
}

/// Signals a provider's process group. Once its leader is reaped and the
/// group is empty the id may be reused, so an empty group is left alone.
fn signal_group(shared: &ChildShared, sig: Signal) {
    if shared.reaped.load(Ordering::SeqCst) && !group_alive(shared.pid) {
        return;
    }
    let _ = killpg(Pid::from_raw(shared.pid), sig);
}

/// Whether any process is left in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid), None), Err(Errno::ESRCH))
}

async fn wait_until(deadline: Instant, global: &Global, mut done: impl FnMut() -> bool) -> bool {
    loop {
        global.reap();
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops one provider: SIGTERM to its group (if `term`), up to `grace` for
/// it to go, then SIGKILL to the group, its cgroup and the orphans it left.
/// `Ok(0)` once its pid is reaped and nothing of it remains.
async fn stop(
    global: &Global,
    shared: &ChildShared,
    term: bool,
    grace: Duration,
) -> Result<u32, String> {
    shared.stopping.store(true, Ordering::SeqCst);
    let group_empty = || shared.reaped.load(Ordering::SeqCst) && !group_alive(shared.pid);
    if term && !group_empty() {
        signal_group(shared, Signal::SIGTERM);
        wait_until(Instant::now() + grace, global, group_empty).await;
    }
    signal_group(shared, Signal::SIGKILL);
    // Once its pid is reaped, the provider's orphans have been reparented
    // to us and the sweep can find them.
    let deadline = Instant::now() + KILL_TIMEOUT;
    wait_until(deadline, global, || {
        signal_group(shared, Signal::SIGKILL);
        shared.reaped.load(Ordering::SeqCst)
    })
    .await;
    let all_gone = wait_until(deadline, global, || {
        if let Some(dir) = &shared.cgroup {
            cgroup::kill_tree(dir);
        }
        let strays = procfs::kill_orphans(global);
        signal_group(shared, Signal::SIGKILL);
        strays == 0
            && group_empty()
            && shared
                .cgroup
                .as_deref()
                .is_none_or(|d| !cgroup::populated(d))
    })
    .await;
    if let Some(dir) = &shared.cgroup {
        remove_cgroup(dir).await;
    }
    if all_gone {
        Ok(0)
    } else {
        Err(format!(
            "processes of provider instance {} survived SIGKILL",
            shared.instance
        ))
    }
}

/// Removes a cgroup directory tree once it is empty: rmdir fails while the
/// last processes are being released, so it is retried for a while.
async fn remove_cgroup(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match cgroup::remove_tree(dir) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The verified image of `binary`: from the cache by hash (no read, no
/// hash: nothing on disk can change it), else read, sealed, hashed and
/// cached.
async fn verified_image(
    images: &SharedImages,
    binary: &str,
    sha256: &str,
) -> Result<Arc<Image>, String> {
    let sha256 = image::normalise_hash(sha256)?;
    let lock = || images.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = lock().get(&sha256) {
        return Ok(image);
    }
    let (path, expected) = (binary.to_owned(), sha256.clone());
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || image::load(&path, &expected))
        .await
        .map_err(|e| format!("reading {binary} failed: {e}"))??;
    tracing::info!(
        %binary,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "binary read, sealed in memory and hashed"
    );
    Ok(lock().insert(loaded))
}

async fn write_stdin(fd: OwnedFd, data: Vec<u8>) {
    let mut pipe = match tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot write a provider's stdin: {e}");
            return;
        }
    };
    if let Err(e) = pipe.write_all(&data).await {
        tracing::debug!("a provider did not read all of its stdin: {e}");
    }
    // Dropping the pipe closes the provider's stdin.
}

/// Sends each line the provider writes on `fd` as an Output message.
async fn relay_lines(
    fd: OwnedFd,
    instance: InstanceId,
    stream: OutputStream,
    tx: mpsc::Sender<FromLauncher>,
) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(instance, "cannot read the provider's output: {e}");
            return;
        }
    };
    let mut r = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(instance, "reading provider output failed: {e}");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let room = MAX_LINE_LEN - line.len();
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= room => (i + 1, true),
            _ => {
                let take = buf.len().min(room);
                (take, line.len() + take >= MAX_LINE_LEN)
            }
        };
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if complete {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if !send_line(&tx, instance, stream, &mut line).await {
                return;
            }
        }
    }
    if !line.is_empty() {
        send_line(&tx, instance, stream, &mut line).await;
    }
}

async fn send_line(
    tx: &mpsc::Sender<FromLauncher>,
    instance: InstanceId,
    stream: OutputStream,
    line: &mut Vec<u8>,
) -> bool {
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    tx.send(FromLauncher::Output {
        instance,
        stream,
        line: text,
    })
    .await
    .is_ok()
}
