//! Shared helpers: real `host-core` processes in private state directories,
//! the CLI run as a user would run it, and fixtures built by `cargo xtask`.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use test_support::cli::{caps as cli_caps, par_args, sign_args};
pub(crate) use test_support::free_port;

/// A command that takes longer than this has hung: kill it and fail.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A workspace binary, built by `cargo xtask test` before the tests run.
pub(crate) fn bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// An unsigned fixture actor built by `cargo xtask fixtures`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    let path = target_dir().join("fixtures").join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// A fresh private directory. Kept short: socket paths are limited to 108 bytes.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wh-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `command` to completion, failing the test if it takes too long.
pub(crate) fn run(mut command: Command) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} hung for {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

/// Runs `host-core ARGS` with a private key directory; asserts success.
pub(crate) fn host_core_ok(keys_dir: &Path, args: &[&str]) -> String {
    let output = host_core(keys_dir, args);
    assert!(
        output.status.success(),
        "host-core {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

pub(crate) fn host_core(keys_dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(bin("host-core"));
    command.args(args).env("WASMHOST_KEYS_DIR", keys_dir);
    run(command)
}

/// A `host-core run` process in its own state directory; killed when dropped.
pub(crate) struct TestHost {
    pub dir: PathBuf,
    pub keys: PathBuf,
    child: Option<Child>,
}

impl TestHost {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    pub(crate) fn start_with(extra: &[&str]) -> Self {
        Self::start_in(temp_dir("host"), extra, &[])
    }

    /// Starts a host in `dir` (its state in `dir/state`, keys in `dir/keys`),
    /// with extra arguments and environment.
    pub(crate) fn start_in(dir: PathBuf, extra: &[&str], env: &[(&str, String)]) -> Self {
        let keys = dir.join("keys");
        let state = dir.join("state");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("host.log"))
            .unwrap();
        // Test defaults, unless `extra` sets them (a flag may be given once).
        let defaults = [
            ("--invocation-timeout-ms", "1000"),
            ("--max-memory-mb", "32"),
        ]
        .into_iter()
        .filter(|(flag, _)| !extra.contains(flag))
        .flat_map(|(flag, value)| [flag, value]);
        let child = Command::new(bin("host-core"))
            .arg("run")
            .arg("--state-dir")
            .arg(&state)
            .args(defaults)
            .args(extra)
            .env("WASMHOST_KEYS_DIR", &keys)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, like a shell job: a test can signal
            // the whole group as a terminal's Ctrl-C does.
            .process_group(0)
            .spawn()
            .expect("start host-core");
        let mut host = Self {
            dir,
            keys,
            child: Some(child),
        };
        host.wait_ready();
        host
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("host-core exited early ({status}):\n{}", self.log());
            }
            if self.state_dir().join("host.sock").exists()
                && self.ctl(&["inventory"]).status.success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "host not ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `host-core ctl --state-dir ... ARGS`.
    pub(crate) fn ctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("host-core"));
        command
            .arg("ctl")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args);
        run(command)
    }

    pub(crate) fn ctl_ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "ctl {args:?} failed: {}\nhost log:\n{}",
            stderr(&output),
            self.log()
        );
        stdout(&output)
    }

    /// Fails with the one-line reason on stderr, which is returned.
    pub(crate) fn ctl_err(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            !output.status.success(),
            "ctl {args:?} should have failed but printed: {}",
            stdout(&output)
        );
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "not one line: {err}");
        err
    }

    pub(crate) fn inventory(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["inventory", "--json"])).unwrap()
    }

    pub(crate) fn worker_pid(&self) -> Option<i32> {
        self.inventory()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "actor-runtime")
            .and_then(|p| p["pid"].as_i64())
            .map(|p| p as i32)
    }

    /// Signs a fixture with this host's key directory; returns (path, key).
    pub(crate) fn sign(&self, fixture_name: &str, name: &str, extra: &[&str]) -> (PathBuf, String) {
        let out = self.dir.join(format!("{name}.signed.wasm"));
        let args = sign_args(&fixture(fixture_name), &out, name, extra);
        let key = host_core_ok(&self.keys, &strs(&args));
        (out, key)
    }

    /// Signs and starts a fixture; returns the actor key.
    pub(crate) fn start_actor(&self, fixture_name: &str, name: &str, extra: &[&str]) -> String {
        let (path, key) = self.sign(fixture_name, name, extra);
        let started = self.ctl_ok(&["start-actor", path.to_str().unwrap()]);
        assert_eq!(started, key);
        key
    }

    /// Waits for the host process to exit on its own.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "host did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl TestHost {
    /// Kills the host process and keeps its directory (for a restart).
    pub(crate) fn into_dir(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = self.dir.clone();
        std::mem::forget(self);
        dir
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl TestHost {
    /// Packs the fixture provider into a signed archive for `capid`.
    pub(crate) fn par(&self, name: &str, capid: &str) -> (PathBuf, String) {
        let out = self.dir.join(format!("{name}.par"));
        let args = par_args(name, "tests", capid, &bin("fixture-provider"), &out);
        let key = host_core_ok(&self.keys, &strs(&args));
        (out, key)
    }

    pub(crate) fn provider(&self, key: &str, link_name: &str) -> Option<serde_json::Value> {
        self.inventory()["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == key && p["link_name"] == link_name)
            .cloned()
    }
}

/// Every live descendant of `root` (children, grandchildren, ...).
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let mut found = all_descendants(root);
    found.retain(|p| process_alive(*p));
    found
}

/// Every descendant of `root`, zombies included.
pub(crate) fn all_descendants(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            let rest = stat.rsplit(')').next().unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Polls `condition` until it holds or `within` passes.
pub(crate) fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An `HttpServer.HandleRequest` payload as JSON, as `ctl call` takes it.
pub(crate) fn http_request(path: &str, query: &str) -> String {
    serde_json::json!({
        "method": "GET",
        "path": path,
        "queryString": query,
        "header": {},
        "body": [],
    })
    .to_string()
}

/// One HTTP/1.1 exchange over a fresh TCP connection: (status, body).
pub(crate) fn http(port: u16, request: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("cannot send the request to port {port}: {e}"));
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A GET that gives up after `within` (connect, send and answer): `None`
/// when nothing, or no HTTP response, came back in time.
pub(crate) fn http_get_within(port: u16, path: &str, within: Duration) -> Option<(u16, String)> {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, within).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

/// Signs the demo actors and packs the demo providers into `dir`, as
/// `cargo xtask run` does.
pub(crate) fn prepare_demo(dir: &std::path::Path) {
    let keys = dir.join("keys");
    let sign = |input: &str, name: &str, caps: &[&str]| {
        let args = sign_args(&fixture(input), &dir.join(input), name, &cli_caps(caps));
        host_core_ok(&keys, &strs(&args));
    };
    sign(
        "hello.wasm",
        "hello",
        &[
            "wasmcloud:httpserver",
            "wasmcloud:builtin:logging",
            "wasmcloud:builtin:numbergen",
        ],
    );
    sign(
        "kvcounter.wasm",
        "kvcounter",
        &["wasmcloud:httpserver", "wasmcloud:keyvalue"],
    );
    for (binary, out, capid) in [
        (
            "httpserver-provider",
            "httpserver.par",
            "wasmcloud:httpserver",
        ),
        ("keyvalue-provider", "keyvalue.par", "wasmcloud:keyvalue"),
    ] {
        let args = par_args(binary, "tests", capid, &bin(binary), &dir.join(out));
        host_core_ok(&keys, &strs(&args));
    }
}

pub(crate) fn demo_manifest() -> PathBuf {
    workspace_root().join("demo").join("manifest.toml")
}

/// The demo manifest running on a test host, with its two HTTP ports.
pub(crate) struct Demo {
    pub host: TestHost,
    pub hello: u16,
    pub counter: u16,
}

pub(crate) fn start_demo(dir: PathBuf, hello: u16, counter: u16) -> Demo {
    let manifest = demo_manifest();
    let host = TestHost::start_in(
        dir.clone(),
        &["--manifest", manifest.to_str().unwrap()],
        &[
            ("DEMO_DIR", dir.display().to_string()),
            ("HELLO_PORT", hello.to_string()),
            ("KVCOUNTER_PORT", counter.to_string()),
        ],
    );
    Demo {
        host,
        hello,
        counter,
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
