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
    Confinement, FromLauncher, InstanceId, LaunchSpec, LauncherRequest, OutputStream, ToLauncher,
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

    /// The scripts' file names start with this (the directory's own name).
    fn tag(&self) -> String {
        self.dir.file_name().unwrap().to_str().unwrap().to_owned()
    }

    /// Writes an executable script; `MARKER` in `body` becomes the marker.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.dir.join(format!("{}-{name}", self.tag()));
        let body = body.replace("MARKER", &self.marker());
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Every live process whose command line mentions the marker, or that
    /// runs one of the scripts. The launcher execs a script from its sealed
    /// in-memory copy, named after the script's path, so the kernel hands
    /// the shell `/dev/fd/N` instead of the path: the shell's open script
    /// descriptor (`/memfd:FILE-NAME`) shows what it runs. (This test process,
    /// the launcher of the in-memory tests, holds the copies themselves, and
    /// so does a child it just forked, until that execs.)
    fn processes(&self) -> Vec<i32> {
        let marker = self.marker();
        let tag = self.tag();
        let us = std::fs::read_link("/proc/self/exe").ok();
        let runs_a_script = |pid: i32| {
            std::fs::read_link(format!("/proc/{pid}/exe")).ok() != us
                && std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                    fds.filter_map(Result::ok).any(|fd| {
                        std::fs::read_link(fd.path()).is_ok_and(|target| {
                            target
                                .to_string_lossy()
                                .starts_with(&format!("/memfd:{tag}-"))
                        })
                    })
                })
        };
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                    .unwrap_or(false)
                    || runs_a_script(pid)
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

/// SHA-256 of a file as the archive claims have it (upper-case hex); of
/// nothing for a file that is not there.
fn sha256_of(path: &str) -> String {
    use sha2::Digest;
    hex::encode_upper(sha2::Sha256::digest(
        std::fs::read(path).unwrap_or_default(),
    ))
}

/// The data directory the test providers get: one for every run, left in
/// place (they write nothing there; the sandbox tests use their own).
fn data_dir() -> String {
    let dir = std::env::temp_dir().join("plt-provider-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_str().unwrap().to_owned()
}

fn spec(instance: InstanceId, binary: &str, stdin: &[u8]) -> LaunchSpec {
    LaunchSpec {
        instance,
        provider_key: "VTESTPROVIDER".into(),
        link_name: "default".into(),
        binary: binary.into(),
        binary_sha256: sha256_of(binary),
        data_dir: data_dir(),
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
#[expect(
    clippy::disallowed_methods,
    reason = "in-memory pipes, not sockets: nothing to register"
)]
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

/// Runs `checks` (lines of `NAME COMMAND...`) in a provider script with
/// `env`; returns each check's `ok` or `denied`, in order (what a denied
/// command said is printed, for a failing test's log).
async fn attempt(
    host: &mut MemHost,
    s: &Scripts,
    instance: InstanceId,
    data: &std::path::Path,
    env: &[(&str, String)],
    checks: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut body = String::new();
    for (name, command) in checks {
        body.push_str(&format!(
            "if out=$( {{ {command} ; }} 2>&1 ); then echo \"check {name} ok\"; else echo \"check {name} denied\"; echo \"why {name}: $out\" | head -n 3; fi\n"
        ));
    }
    body.push_str("echo checks-done\n");
    let bin = s.script(&format!("attack-{instance}.sh"), &body);
    let mut sp = spec(instance, &bin, b"");
    sp.data_dir = data.to_str().unwrap().to_owned();
    sp.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    host.launch(sp).await.unwrap();
    let mut results = Vec::new();
    loop {
        let line = host.line(instance, "").await;
        if line == "checks-done" {
            break;
        }
        if line.starts_with("why ") {
            eprintln!("{line}");
        }
        if let Some(rest) = line.strip_prefix("check ") {
            let (name, verdict) = rest.split_once(' ').unwrap();
            results.push((name.to_owned(), verdict.to_owned()));
        }
    }
    assert_eq!(host.exited(instance).await.1, Some(0));
    results
}

fn verdicts(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_provider_reaches_only_its_own_data_directory() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("sandbox-files");
    let own = s.dir.join("data/VOWN/default");
    let other = s.dir.join("data/VOTHER/default");
    let cache = s.dir.join("cache/compiled");
    for dir in [&own, &other, &cache] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(other.join("secret"), "theirs").unwrap();
    std::fs::write(cache.join("module.cwasm"), "native code").unwrap();
    let tmp = std::env::temp_dir().join(format!("plt-{}-escape", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let (mut host, run) = in_memory(Options::default());
    let results = attempt(
        &mut host,
        &s,
        20,
        &own,
        &[
            ("OWN", own.display().to_string()),
            ("OTHER", other.display().to_string()),
            ("CACHE", cache.display().to_string()),
            ("ESCAPE", tmp.display().to_string()),
        ],
        &[
            ("write-own", "echo mine > \"$OWN/f\""),
            ("read-own", "grep -q mine \"$OWN/f\""),
            ("mkdir-own", "mkdir \"$OWN/sub\""),
            ("read-system", "cat /etc/passwd"),
            ("run-system", "/bin/true"),
            ("dev-null", "echo x > /dev/null"),
            ("read-other", "cat \"$OTHER/secret\""),
            ("write-other", "echo x > \"$OTHER/planted\""),
            ("read-cache", "cat \"$CACHE/module.cwasm\""),
            ("write-cache", "echo x > \"$CACHE/module.cwasm\""),
            ("list-cache", "ls \"$CACHE\""),
            ("write-tmp", "echo x > \"$ESCAPE\""),
            ("exec-own", "cp /bin/true \"$OWN/t\" && \"$OWN/t\""),
        ],
    )
    .await;
    assert_eq!(
        results,
        verdicts(&[
            ("write-own", "ok"),
            ("read-own", "ok"),
            ("mkdir-own", "ok"),
            ("read-system", "ok"),
            ("run-system", "ok"),
            ("dev-null", "ok"),
            ("read-other", "denied"),
            ("write-other", "denied"),
            ("read-cache", "denied"),
            ("write-cache", "denied"),
            ("list-cache", "denied"),
            ("write-tmp", "denied"),
            ("exec-own", "denied"),
        ])
    );
    assert_eq!(std::fs::read_to_string(own.join("f")).unwrap(), "mine\n");
    assert!(!other.join("planted").exists());
    assert_eq!(
        std::fs::read_to_string(cache.join("module.cwasm")).unwrap(),
        "native code"
    );
    assert!(!tmp.exists());
    finish(host, run).await;
}

#[tokio::test]
async fn a_provider_cannot_signal_or_ptrace_what_is_outside_its_sandbox() {
    let _shared = EXCLUSIVE.read().await;
    assert!(
        std::path::Path::new("/usr/bin/perl").exists(),
        "the ptrace and socket checks use perl (Debian's perl-base)"
    );
    let s = Scripts::new("sandbox-procs");
    let data = s.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A pathname socket (as provider.sock) and an abstract one, outside.
    let path = s.dir.join("provider.sock");
    let _pathname = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let abstract_name = format!("plt-{}-abstract", std::process::id());
    let _abstract = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let connect = "perl -MSocket -e 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or exit 2; connect($s, pack_sockaddr_un($ARGV[0])) or exit 1'";
    let (mut host, run) = in_memory(Options::default());
    let results = attempt(
        &mut host,
        &s,
        21,
        &data,
        &[
            ("LAUNCHER", std::process::id().to_string()),
            ("SOCK", path.display().to_string()),
            ("ABSTRACT", format!("\\0{abstract_name}")),
        ],
        &[
            ("signal-own-child", "sleep 5 & kill $!"),
            // SIGWINCH does nothing to this process, should it get through.
            ("signal-launcher", "kill -WINCH \"$LAUNCHER\""),
            ("probe-launcher", "kill -0 \"$LAUNCHER\""),
            // PTRACE_SEIZE (0x4206): attaches without stopping the tracee;
            // the tracer's exit detaches it again.
            (
                "ptrace-launcher",
                "perl -e 'exit(syscall(101, 0x4206, $ARGV[0], 0, 0) == 0 ? 0 : 1)' \"$LAUNCHER\"",
            ),
            ("environ-launcher", "cat /proc/$LAUNCHER/environ"),
            ("fds-launcher", "readlink /proc/$LAUNCHER/fd/0"),
            ("stat-launcher", "cat /proc/$LAUNCHER/stat"),
            // Landlock does not mediate connect() to an existing pathname
            // socket: the host's own peer checks refuse what must be refused.
            ("connect-pathname", &format!("{connect} \"$SOCK\"")),
            (
                "connect-abstract",
                "perl -MSocket -e 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or exit 2; my $n = $ARGV[0]; $n =~ s/^\\\\0/\\0/; connect($s, pack_sockaddr_un($n)) or exit 1' \"$ABSTRACT\"",
            ),
        ],
    )
    .await;
    assert_eq!(
        results,
        verdicts(&[
            ("signal-own-child", "ok"),
            ("signal-launcher", "denied"),
            ("probe-launcher", "denied"),
            ("ptrace-launcher", "denied"),
            ("environ-launcher", "denied"),
            ("fds-launcher", "denied"),
            ("stat-launcher", "ok"),
            ("connect-pathname", "ok"),
            ("connect-abstract", "denied"),
        ])
    );
    finish(host, run).await;
}

#[tokio::test]
async fn what_runs_is_what_was_verified() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("verified");
    let bin = s.script("p.sh", "echo version:1");
    let original = sha256_of(&bin);
    let (mut host, run) = in_memory(Options::default());
    host.launch(spec(30, &bin, b"")).await.unwrap();
    assert_eq!(host.line(30, "version:").await, "1");
    assert_eq!(host.exited(30).await.1, Some(0));

    // The cached binary is replaced on disk: a restart still runs the
    // verified bytes, from memory.
    s.script("p.sh", "echo version:2");
    let mut restart = spec(31, &bin, b"");
    restart.binary_sha256 = original.clone();
    host.launch(restart).await.unwrap();
    assert_eq!(host.line(31, "version:").await, "1");
    assert_eq!(host.exited(31).await.1, Some(0));

    // A binary whose hash does not match the verified one is refused,
    // clearly (a hash the launcher holds a copy of runs that copy, whatever
    // the path: the hash names the bytes).
    let other = s.script("other.sh", "echo version:3");
    let claimed = sha256_of(&s.script("claimed.sh", "echo version:4"));
    let mut wrong = spec(32, &other, b"");
    wrong.binary_sha256 = claimed.clone();
    let err = host.launch(wrong).await.unwrap_err();
    assert!(
        err.starts_with(&format!("refused to run {other}: its SHA-256 "))
            && err.contains(&format!("does not match the verified {claimed}")),
        "{err}"
    );
    let mut garbage = spec(33, &bin, b"");
    garbage.binary_sha256 = "not a hash".into();
    let err = host.launch(garbage).await.unwrap_err();
    assert!(err.contains("no valid SHA-256"), "{err}");
    finish(host, run).await;

    // A new launcher (after a crash) has no copy: it reads the file again,
    // and the replaced one does not match.
    let (mut host, run) = in_memory(Options::default());
    let mut again = spec(34, &bin, b"");
    again.binary_sha256 = original.clone();
    let err = host.launch(again).await.unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    assert!(!host
        .seen
        .iter()
        .any(|m| matches!(m, FromLauncher::Exited { instance: 34, .. })));
    finish(host, run).await;
}

#[tokio::test]
async fn each_launch_reports_its_confinement() {
    let _shared = EXCLUSIVE.read().await;
    let s = Scripts::new("confined");
    let bin = s.script("p.sh", "exit 0");
    let (mut host, run) = in_memory(Options::default());
    host.launch(spec(40, &bin, b"")).await.unwrap();
    let confined = host
        .wait_for(|m| matches!(m, FromLauncher::Confined { instance: 40, .. }))
        .await;
    let FromLauncher::Confined { confinement, .. } = confined else {
        unreachable!()
    };
    // This machine's kernel has Landlock ABI 6 or later (Linux 6.12+); on
    // an older one the report says what is not confined instead.
    assert!(
        matches!(confinement, Confinement::Landlock { abi } if abi >= 6),
        "{confinement:?}"
    );
    // The data directory must be usable: a missing one is an error.
    let mut missing = spec(41, &bin, b"");
    missing.data_dir = format!("{}/no-such-dir", s.marker());
    let err = host.launch(missing).await.unwrap_err();
    assert!(err.contains("data directory"), "{err}");
    assert_eq!(host.exited(40).await.1, Some(0));
    finish(host, run).await;
}
