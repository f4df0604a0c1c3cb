//! The launcher with real processes: shell scripts stand in for providers.
//!
//! Most tests drive `run_with` in memory, so this test process is the
//! launcher (subreaper, reaper of every child). The tests that start the real
//! binary take the lock exclusively: an in-process reaper would otherwise reap
//! the launcher binary from under its `std::process::Child`, and an orphan
//! sweep would count it as a stray.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use provider_launcher::{LauncherError, Options};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::RwLock;
use tokio::task::JoinHandle;
use wire::handshake::{self, Role};
use wire::launcher::{
    FromLauncher, InstanceId, LaunchSpec, LauncherRequest, OutputStream, ToLauncher,
};
use wire::{FrameReader, FrameWriter};

static EXCLUSIVE: RwLock<()> = RwLock::const_new(());
static DIRS: AtomicU32 = AtomicU32::new(0);

const TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary directory whose path is the marker of its scripts' processes.
struct Scripts {
    dir: PathBuf,
}

impl Scripts {
    fn new(name: &str) -> Self {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "plt-{}-{n}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn marker(&self) -> String {
        self.dir.to_str().unwrap().to_owned()
    }

    /// Writes an executable script; `MARKER` in `body` becomes the marker.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.dir.join(name);
        let body = body.replace("MARKER", &self.marker());
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Every live process whose command line mentions the marker.
    fn processes(&self) -> Vec<i32> {
        let marker = self.marker();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a process with this pid exists at all (a zombie counts).
fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn state_and_ppid(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?))
}

fn spec(instance: InstanceId, binary: &str, stdin: &[u8]) -> LaunchSpec {
    LaunchSpec {
        instance,
        provider_key: "VTESTPROVIDER".into(),
        link_name: "default".into(),
        binary: binary.into(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stdin: wire::Bytes::from(stdin.to_vec()),
    }
}

/// The host's end of a launcher channel.
struct Host<R, W> {
    tx: FrameWriter<W, ToLauncher>,
    rx: FrameReader<R, FromLauncher>,
    next_id: u64,
    seen: Vec<FromLauncher>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Host<R, W> {
    fn new(r: R, w: W) -> Self {
        Self {
            tx: FrameWriter::new(w),
            rx: FrameReader::new(r),
            next_id: 1,
            seen: Vec::new(),
        }
    }

    async fn recv(&mut self) -> FromLauncher {
        tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .expect("timed out waiting for the launcher")
            .expect("channel error")
            .expect("the launcher closed the channel")
    }

    async fn request(&mut self, request: LauncherRequest) -> Result<u32, String> {
        let id = self.next_id;
        self.next_id += 1;
        self.tx
            .send(&ToLauncher::Request { id, request })
            .await
            .unwrap();
        loop {
            match self.recv().await {
                FromLauncher::Reply { id: got, result } if got == id => {
                    return result.map_err(|e| e.message)
                }
                other => self.seen.push(other),
            }
        }
    }

    async fn launch(&mut self, spec: LaunchSpec) -> Result<u32, String> {
        self.request(LauncherRequest::Launch(spec)).await
    }

    async fn stop(&mut self, instance: InstanceId, grace_ms: u64) -> Result<u32, String> {
        self.request(LauncherRequest::Stop { instance, grace_ms })
            .await
    }

    async fn wait_for(&mut self, pred: impl Fn(&FromLauncher) -> bool) -> FromLauncher {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        loop {
            let msg = self.recv().await;
            if pred(&msg) {
                return msg;
            }
            self.seen.push(msg);
        }
    }

    async fn line(&mut self, instance: InstanceId, prefix: &str) -> String {
        match self
            .wait_for(|m| {
                matches!(m, FromLauncher::Output { instance: i, line, .. }
                    if *i == instance && line.starts_with(prefix))
            })
            .await
        {
            FromLauncher::Output { line, .. } => line[prefix.len()..].to_owned(),
            _ => unreachable!(),
        }
    }

    async fn exited(&mut self, instance: InstanceId) -> (u32, Option<i32>, Option<i32>) {
        match self
            .wait_for(|m| matches!(m, FromLauncher::Exited { instance: i, .. } if *i == instance))
            .await
        {
            FromLauncher::Exited {
                pid, code, signal, ..
            } => (pid, code, signal),
            _ => unreachable!(),
        }
    }
}

type MemHost = Host<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
>;

/// Starts `run_with` in memory. The test process is the launcher.
#[allow(clippy::disallowed_methods)] // in-memory pipes, not sockets: nothing to register
fn in_memory(options: Options) -> (MemHost, JoinHandle<Result<(), LauncherError>>) {
    let (host, launcher) = tokio::io::duplex(64 * 1024);
    let (lr, lw) = tokio::io::split(launcher);
    let run = tokio::spawn(provider_launcher::run_with(
        lr,
        lw,
        options,
        std::future::pending(),
    ));
    let (hr, hw) = tokio::io::split(host);
    (Host::new(hr, hw), run)
}

async fn finish(host: MemHost, run: JoinHandle<Result<(), LauncherError>>) {
    drop(host);
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("run did not end after EOF")
        .unwrap()
        .expect("run failed");
}

fn assert_gone(scripts: &Scripts, pids: &[i32]) {
    for &pid in pids {
        assert!(
            !exists(pid),
            "process {pid} is still there: {:?}",
            state_and_ppid(pid)
        );
    }
    let left = scripts.processes();
    assert!(left.is_empty(), "processes of the scripts remain: {left:?}");
}

#[tokio::test]
async fn stdin_output_and_exit_code() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("exit3");
    let bin = s.script(
        "p.sh",
        "read line; echo got:$line; echo oops >&2; printf 'no newline'; exit 3",
    );
    let (mut host, run) = in_memory(Options::default());
    let pid = host.launch(spec(1, &bin, b"hello\n")).await.unwrap();
    assert!(pid > 1);
    assert_eq!(host.line(1, "got:").await, "hello");
    let err = host
        .wait_for(|m| {
            matches!(
                m,
                FromLauncher::Output {
                    stream: OutputStream::Stderr,
                    ..
                }
            )
        })
        .await;
    assert!(matches!(err, FromLauncher::Output { line, .. } if line == "oops"));
    assert_eq!(host.exited(1).await, (pid, Some(3), None));
    // The last, unterminated line is still delivered.
    assert_eq!(host.line(1, "no newline").await, "");
    // Stopping what already exited is fine.
    assert_eq!(host.stop(1, 100).await, Ok(0));
    assert_gone(&s, &[pid as i32]);
    finish(host, run).await;
}

#[tokio::test]
async fn environment_is_only_the_spec() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("env");
    // The shell's environment as execve gave it, before the shell adds to it.
    let bin = s.script("p.sh", "tr '\\0' '\\n' < /proc/$$/environ; echo END");
    let (mut host, run) = in_memory(Options::default());
    let mut sp = spec(2, &bin, b"");
    sp.env.push(("FOO".into(), "bar baz".into()));
    host.launch(sp).await.unwrap();
    let mut lines = Vec::new();
    loop {
        let line = host.line(2, "").await;
        if line == "END" {
            break;
        }
        lines.push(line);
    }
    lines.sort();
    assert_eq!(lines, ["FOO=bar baz", "PATH=/usr/bin:/bin"]);
    assert_eq!(host.exited(2).await.1, Some(0));
    finish(host, run).await;
}

#[tokio::test]
async fn stop_kills_the_group_and_grandchildren() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("group");
    let bin = s.script(
        "p.sh",
        "sh -c 'while :; do sleep 0.2; done' MARKER &\necho child:$!\nwhile :; do sleep 0.2; done",
    );
    let (mut host, run) = in_memory(Options::default());
    let pid = host.launch(spec(3, &bin, b"")).await.unwrap();
    let child: i32 = host.line(3, "child:").await.parse().unwrap();
    assert!(exists(child));
    assert!(s.processes().len() >= 2);
    let started = Instant::now();
    assert_eq!(host.stop(3, 3000).await, Ok(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SIGTERM was enough"
    );
    assert_eq!(host.exited(3).await, (pid, None, Some(libc::SIGTERM)));
    assert_gone(&s, &[pid as i32, child]);
    finish(host, run).await;
}

#[tokio::test]
async fn term_ignoring_provider_is_killed_after_the_grace() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("stubborn");
    let bin = s.script(
        "p.sh",
        "trap '' TERM\necho ready\nwhile true; do sleep 0.1; done",
    );
    let (mut host, run) = in_memory(Options::default());
    let pid = host.launch(spec(4, &bin, b"")).await.unwrap();
    host.line(4, "ready").await;
    let started = Instant::now();
    assert_eq!(host.stop(4, 300).await, Ok(0));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "stopped after {took:?}");
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
    assert_eq!(host.exited(4).await, (pid, None, Some(libc::SIGKILL)));
    assert_gone(&s, &[pid as i32]);
    finish(host, run).await;
}

async fn setsid_descendant(options: Options) {
    let s = Scripts::new("setsid");
    let bin = s.script(
        "p.sh",
        "setsid sh -c 'while :; do sleep 0.2; done' MARKER &\necho child:$!\nwhile :; do sleep 0.2; done",
    );
    let (mut host, run) = in_memory(options);
    let pid = host.launch(spec(5, &bin, b"")).await.unwrap();
    let child: i32 = host.line(5, "child:").await.parse().unwrap();
    // Wait until it has really left the group.
    let deadline = Instant::now() + TIMEOUT;
    while nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(child))).map(|p| p.as_raw())
        == Ok(pid as i32)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(host.stop(5, 1000).await, Ok(0));
    assert_gone(&s, &[pid as i32, child]);
    finish(host, run).await;
}

#[tokio::test]
async fn setsid_descendant_is_killed_with_cgroups() {
    let _shared = EXCLUSIVE.read().await;
    setsid_descendant(Options { cgroups: true }).await;
}

#[tokio::test]
async fn setsid_descendant_is_killed_without_cgroups() {
    let _shared = EXCLUSIVE.read().await;
    setsid_descendant(Options { cgroups: false }).await;
}

#[tokio::test]
async fn failed_launches_are_error_replies() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("missing");
    let (mut host, run) = in_memory(Options::default());
    let missing = format!("{}/nope", s.marker());
    assert_eq!(
        host.launch(spec(6, &missing, b"")).await,
        Err(format!("cannot exec {missing}: No such file or directory"))
    );
    let not_exec = s.dir.join("data.txt");
    std::fs::write(&not_exec, "x").unwrap();
    let not_exec = not_exec.to_str().unwrap().to_owned();
    let err = host.launch(spec(7, &not_exec, b"")).await.unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    let mut bad_env = spec(8, "/bin/true", b"");
    bad_env.env.push(("A=B".into(), "x".into()));
    assert!(host.launch(bad_env).await.is_err());
    // The failed launch is not reported as an exit, and the launcher goes on.
    let bin = s.script("p.sh", "echo alive");
    host.launch(spec(6, &bin, b"")).await.unwrap();
    assert_eq!(host.line(6, "alive").await, "");
    assert_eq!(host.exited(6).await.1, Some(0));
    assert!(!host.seen.iter().any(|m| matches!(
        m,
        FromLauncher::Exited {
            instance: 7 | 8,
            ..
        }
    )));
    // A second launch of a live instance is refused.
    let bin = s.script("q.sh", "sleep 5");
    host.launch(spec(9, &bin, b"")).await.unwrap();
    assert!(host.launch(spec(9, &bin, b"")).await.is_err());
    assert_eq!(host.stop(9, 0).await, Ok(0));
    assert_eq!(host.stop(12345, 0).await, Ok(0));
    finish(host, run).await;
}

#[tokio::test]
async fn garbage_ends_the_run_with_an_error_and_kills_providers() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("garbage");
    let bin = s.script(
        "p.sh",
        "sh -c 'while :; do sleep 0.2; done' MARKER &\necho child:$!\nwhile :; do sleep 0.2; done",
    );
    let (mut host, run) = in_memory(Options::default());
    let pid = host.launch(spec(10, &bin, b"")).await.unwrap();
    let child: i32 = host.line(10, "child:").await.parse().unwrap();
    let mut raw = host.tx.into_inner();
    raw.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        .await
        .unwrap();
    let result = tokio::time::timeout(TIMEOUT, run).await.unwrap().unwrap();
    assert!(result.is_err());
    assert_gone(&s, &[pid as i32, child]);
}

#[tokio::test]
async fn eof_kills_every_provider() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("eof");
    let bin = s.script(
        "p.sh",
        "setsid sh -c 'while :; do sleep 0.2; done' MARKER &\nsh -c 'while :; do sleep 0.2; done' MARKER &\necho child:$!\nwhile :; do sleep 0.2; done",
    );
    let (mut host, run) = in_memory(Options::default());
    let a = host.launch(spec(11, &bin, b"")).await.unwrap();
    let ca: i32 = host.line(11, "child:").await.parse().unwrap();
    let b = host.launch(spec(12, &bin, b"")).await.unwrap();
    let cb: i32 = host.line(12, "child:").await.parse().unwrap();
    // Let the setsid'd ones get going.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    finish(host, run).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_gone(&s, &[a as i32, b as i32, ca, cb]);
}

/// A fake host-core: listens, starts the real launcher binary through
/// `start`, accepts it and checks its handshake.
async fn fake_host(
    s: &Scripts,
    start: impl FnOnce(&str) -> std::process::Child,
) -> (
    Host<wire::socket::SocketReader, wire::socket::SocketWriter>,
    std::process::Child,
) {
    let path = s.dir.join("host.sock");
    let path = path.to_str().unwrap().to_owned();
    let listener = ListenerOptions::new()
        .name(path.as_str().to_fs_name::<GenericFilePath>().unwrap())
        .create_tokio()
        .unwrap();
    let child = start(&path);
    let conn = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("the launcher did not connect")
        .unwrap();
    let (mut r, mut w) = wire::socket::split_local(conn).unwrap();
    let hello = handshake::accept(&mut r, &mut w, |h| {
        if h.role == Role::Launcher && h.token == "sesame" {
            Ok(())
        } else {
            Err("who are you?".into())
        }
    })
    .await
    .unwrap();
    assert_eq!(hello.role, Role::Launcher);
    (Host::new(r, w), child)
}

const LAUNCHER: &str = env!("CARGO_BIN_EXE_provider-launcher");

/// The directory of `pid`'s cgroup v2, if it is in one of the launcher's.
fn launcher_cgroup_of(pid: i32) -> Option<PathBuf> {
    let rel = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))?;
    if !rel.contains("/wasmhost-providers-") {
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
    })?;
    Some(PathBuf::from(mount).join(rel.trim_start_matches('/')))
}

fn launcher_cmd(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env("PROVIDER_LAUNCHER_TOKEN", "sesame")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Waits up to 2 s for every listed process and every marked one to be
/// gone (zombies count as gone: their reaper is not us in every case).
async fn gone_within_2s(s: &Scripts, pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&p| state_and_ppid(p).is_some_and(|(st, _)| st != 'Z'))
            .chain(s.processes())
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for &p in &left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            panic!("still running 2 s after the host went away: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn real_launcher_cleans_up_when_the_host_disconnects() {
    let _exclusive = EXCLUSIVE.write().await;
    let s = Scripts::new("binary-eof");
    let bin = s.script(
        "p.sh",
        "setsid sh -c 'while :; do sleep 0.2; done' MARKER &\nsh -c 'while :; do sleep 0.2; done' MARKER &\necho child:$!\nwhile :; do sleep 0.2; done",
    );
    let (mut host, mut launcher) = fake_host(&s, |sock| {
        launcher_cmd(LAUNCHER)
            .arg("--socket")
            .arg(sock)
            .spawn()
            .unwrap()
    })
    .await;
    let pid = host.launch(spec(1, &bin, b"")).await.unwrap() as i32;
    let child: i32 = host.line(1, "child:").await.parse().unwrap();
    assert_eq!(state_and_ppid(pid).unwrap().1, launcher.id() as i32);
    // Where cgroups are usable, the provider has one of its own under the
    // launcher's; it must be gone with the launcher.
    let cgroup = launcher_cgroup_of(pid);
    if let Some(dir) = &cgroup {
        assert!(dir.ends_with(format!("wasmhost-providers-{}/1", launcher.id())));
        assert!(dir.exists());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(host);
    gone_within_2s(&s, &[pid, child, launcher.id() as i32]).await;
    assert!(launcher.wait().unwrap().success());
    if let Some(dir) = &cgroup {
        assert!(!dir.parent().unwrap().exists(), "{} is left", dir.display());
    }
}

#[tokio::test]
async fn real_launcher_cleans_up_when_the_host_is_killed() {
    let _exclusive = EXCLUSIVE.write().await;
    let s = Scripts::new("binary-kill");
    let bin = s.script(
        "p.sh",
        "setsid sh -c 'while :; do sleep 0.2; done' MARKER &\nsh -c 'while :; do sleep 0.2; done' MARKER &\necho child:$!\nwhile :; do sleep 0.2; done",
    );
    // A shell stands in for host-core, so that killing it -9 leaves the
    // connection (held by this test) open: only the parent-death signal
    // tells the launcher.
    let (mut host, mut fake_parent) = fake_host(&s, |sock| {
        launcher_cmd("/bin/sh")
            .arg("-c")
            .arg("\"$0\" --socket \"$1\" & wait")
            .arg(LAUNCHER)
            .arg(sock)
            .spawn()
            .unwrap()
    })
    .await;
    let pid = host.launch(spec(1, &bin, b"")).await.unwrap() as i32;
    let child: i32 = host.line(1, "child:").await.parse().unwrap();
    let launcher = state_and_ppid(pid).unwrap().1;
    assert_eq!(state_and_ppid(launcher).unwrap().1, fake_parent.id() as i32);
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake_parent.kill().unwrap();
    fake_parent.wait().unwrap();
    gone_within_2s(&s, &[pid, child, launcher]).await;
    // If this process is a subreaper (another test ran the launcher loop
    // in-process), the launcher was reparented here: reap it.
    if state_and_ppid(launcher).is_some_and(|(_, ppid)| ppid == std::process::id() as i32) {
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(launcher), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(launcher), 0)
        );
    }
    drop(host);
}
