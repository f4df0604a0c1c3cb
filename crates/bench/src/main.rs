//! `bench`: what the process-isolated design costs, each figure beside a
//! baseline measured in the same run (these machines are noisy, so ratios
//! are what compare from run to run).
//!
//! `cargo xtask bench` runs it in release and writes BENCHMARKS-style
//! markdown to stdout and JSON to `target/bench/results.json`. `--smoke`
//! runs every measurement briefly (the test suite does, so it cannot rot).

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use interprocess::local_socket::{tokio::prelude::*, tokio::Stream, GenericFilePath, ToFsName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{
    control::{ControlReply, ControlRequest, ControlResponse, CONTROL_MAX_FRAME_LEN},
    handshake::{self, Role},
    Bytes, FrameReader, FrameWriter,
};

#[derive(Serialize, Clone)]
struct Row {
    name: String,
    value: f64,
    unit: String,
    baseline_name: String,
    baseline: f64,
    /// value / baseline
    ratio: f64,
    goal: String,
    met: Option<bool>,
}

struct Settings {
    smoke: bool,
    /// `--only GROUP` (calls, http, hop, start, recovery, footprint): just
    /// that group of figures, for profiling one path.
    only: Option<String>,
    /// Calls per latency figure; `--calls N` sets it.
    calls: usize,
    http_secs: f64,
    /// Figures and their baselines run in this many alternating rounds, so
    /// a slow spell of the machine falls on both sides.
    rounds: usize,
    starts: usize,
    recovery_actors: usize,
    footprint_instances: usize,
}

struct Options {
    smoke: bool,
    only: Option<String>,
    calls: Option<usize>,
    json: Option<PathBuf>,
}

fn usage() -> String {
    format!(
        "usage: bench [--smoke] [--only GROUP] [--calls N] [--json PATH]\n\
         \x20 --smoke       a small, quick run (what `cargo xtask test` runs)\n\
         \x20 --only GROUP  run one group: {}\n\
         \x20 --calls N     calls per latency measurement\n\
         \x20 --json PATH   also write the rows as JSON",
        GROUPS.join(", ")
    )
}

/// `None` when help was asked for. Unknown arguments are refused: a typo
/// must not start a full run of several minutes.
fn parse_options(args: &[String]) -> Result<Option<Options>> {
    let mut options = Options {
        smoke: false,
        only: None,
        calls: None,
        json: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--smoke" => options.smoke = true,
            "--only" => {
                let group = value()?;
                if !GROUPS.contains(&group.as_str()) {
                    bail!("--only takes one of {}", GROUPS.join(", "));
                }
                options.only = Some(group.clone());
            }
            "--calls" => {
                let n = value()?;
                options.calls = Some(
                    n.parse()
                        .with_context(|| format!("--calls needs a number, not {n:?}"))?,
                );
            }
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(Some(options))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, listen, echo] = args.as_slice() {
        if mode == "--serve-relay" {
            // A bare relay process between the client and the echo: the
            // floor of any path with one more process in it, as ours has.
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(raw_relay_server(PathBuf::from(listen), PathBuf::from(echo)));
        }
    }
    if let [mode, port] = args.as_slice() {
        if mode == "--serve-hyper" {
            return serve_bare_hyper(port.parse()?);
        }
        if mode == "--serve-echo" {
            // The raw echo in a process of its own, for the cross-process row.
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(raw_echo_server(PathBuf::from(port)));
        }
    }
    let Options {
        smoke,
        only,
        calls,
        json: out,
    } = match parse_options(&args)? {
        Some(options) => options,
        None => {
            println!("{}", usage());
            return Ok(());
        }
    };
    let mut settings = if smoke {
        Settings {
            smoke,
            only: only.clone(),
            calls: 200,
            http_secs: 0.5,
            rounds: 2,
            starts: 2,
            recovery_actors: 10,
            footprint_instances: 20,
        }
    } else {
        Settings {
            smoke,
            only: only.clone(),
            calls: 20_000,
            http_secs: 10.0,
            rounds: 5,
            starts: 10,
            recovery_actors: 100,
            footprint_instances: 1000,
        }
    };
    if let Some(calls) = calls {
        // More calls than the default, to profile one path for longer.
        settings.calls = calls;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(run_all(&settings))?;
    print_table(&rows, &settings);
    if let Some(out) = out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_string_pretty(&rows)?)?;
        eprintln!("bench: wrote {}", out.display());
    }
    Ok(())
}

// ---------------------------------------------------------------- setup

fn bin_dir() -> Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no bin dir")?
        .to_path_buf())
}

fn fixtures_dir() -> Result<PathBuf> {
    // target/{debug,release}/bench -> target/fixtures
    let dir = bin_dir()?
        .parent()
        .context("no target dir")?
        .join("fixtures");
    if !dir.join("echo.wasm").exists() {
        bail!(
            "{} has no fixtures: run `cargo xtask fixtures` first",
            dir.display()
        );
    }
    Ok(dir)
}

struct Work {
    dir: PathBuf,
    keys: PathBuf,
}

/// A bench killed outright (its hosts die with it) cannot remove its work
/// directory; the next run removes those whose bench is gone.
fn remove_dead_benches_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wasmhost-bench-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Work {
    fn new() -> Result<Self> {
        remove_dead_benches_dirs();
        let dir = std::env::temp_dir().join(format!("wasmhost-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            keys: dir.join("keys"),
            dir,
        })
    }

    fn host_core(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_dir()?.join("host-core"))
            .args(args)
            .env("WASMHOST_KEYS_DIR", &self.keys)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "host-core {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Signs a fixture under `name` (a new module key per name).
    fn sign(&self, fixture: &str, name: &str, caps: &[&str]) -> Result<PathBuf> {
        let out = self.dir.join(format!("{name}.wasm"));
        let input = fixtures_dir()?.join(fixture);
        let mut args = vec![
            "claims",
            "sign",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--name",
            name,
        ];
        for cap in caps {
            args.extend(["--cap", cap]);
        }
        self.host_core(&args)?;
        Ok(out)
    }

    fn par(&self, binary: &str, capid: &str) -> Result<PathBuf> {
        let out = self.dir.join(format!("{binary}.par"));
        let target = format!(
            "{}-{}={}",
            std::env::consts::ARCH,
            std::env::consts::OS,
            bin_dir()?.join(binary).display()
        );
        self.host_core(&[
            "par",
            "create",
            "--name",
            binary,
            "--vendor",
            "bench",
            "--capid",
            capid,
            "--target",
            &target,
            "-o",
            out.to_str().unwrap(),
        ])?;
        Ok(out)
    }
}

struct Host {
    child: Child,
    state: PathBuf,
}

impl Host {
    fn start(work: &Work, name: &str) -> Result<(Self, Duration)> {
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

    async fn client(&self) -> Result<Client> {
        Client::connect(&self.state.join("host.sock")).await
    }

    fn pid_of(&self, inventory: &serde_json::Value, name: &str) -> Option<i32> {
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
struct Client {
    reader: FrameReader<tokio::io::ReadHalf<Stream>, ControlResponse>,
    writer: FrameWriter<tokio::io::WriteHalf<Stream>, ControlRequest>,
}

impl Client {
    #[allow(clippy::disallowed_methods)] // a plain tokio client, like the raw echo client it is compared with
    async fn connect(path: &Path) -> Result<Self> {
        let stream = Stream::connect(path.to_fs_name::<GenericFilePath>()?).await?;
        let (mut r, mut w) = tokio::io::split(stream);
        handshake::connect(&mut r, &mut w, Role::Control, "").await?;
        Ok(Self {
            reader: FrameReader::with_max_len(r, CONTROL_MAX_FRAME_LEN),
            writer: FrameWriter::with_max_len(w, CONTROL_MAX_FRAME_LEN),
        })
    }

    async fn request(&mut self, request: &ControlRequest) -> Result<ControlReply> {
        self.writer.send(request).await?;
        match self.reader.recv().await? {
            Some(ControlResponse::Ok(reply)) => Ok(reply),
            Some(ControlResponse::Err(e)) => Err(anyhow!(e)),
            None => Err(anyhow!("the host hung up")),
        }
    }

    async fn start_actor(&mut self, path: &Path, count: u32) -> Result<String> {
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

    async fn call(&mut self, key: &str, operation: &str, payload: &[u8]) -> Result<Vec<u8>> {
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

    async fn start_provider(&mut self, par: &Path) -> Result<String> {
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

    async fn link(
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

    async fn inventory(&mut self) -> Result<serde_json::Value> {
        match self.request(&ControlRequest::Inventory).await? {
            ControlReply::Inventory(inv) => Ok(serde_json::to_value(&inv)?),
            _ => bail!("unexpected reply"),
        }
    }
}

// ---------------------------------------------------------------- statistics

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Latencies {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

/// Samples and wall time gathered over several rounds.
#[derive(Default)]
struct Tally {
    samples: Vec<Duration>,
    wall: Duration,
}

impl Tally {
    fn add(&mut self, (samples, wall): (Vec<Duration>, Duration)) {
        self.samples.extend(samples);
        self.wall += wall;
    }

    fn summary(self) -> Latencies {
        summarize(self.samples, self.wall)
    }
}

fn summarize(mut samples: Vec<Duration>, wall: Duration) -> Latencies {
    samples.sort();
    Latencies {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
        per_sec: samples.len() as f64 / wall.as_secs_f64(),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(
    name: &str,
    value: f64,
    unit: &str,
    baseline_name: &str,
    baseline: f64,
    goal: &str,
    met: Option<bool>,
) -> Row {
    Row {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline_name: baseline_name.into(),
        baseline,
        ratio: if baseline > 0.0 {
            value / baseline
        } else {
            f64::NAN
        },
        goal: goal.into(),
        met,
    }
}

// ---------------------------------------------------------------- the runs

/// The groups of figures, in the order they run.
const GROUPS: [&str; 6] = ["calls", "http", "hop", "start", "recovery", "footprint"];

async fn run_all(s: &Settings) -> Result<Vec<Row>> {
    let work = Work::new()?;
    let mut rows = Vec::new();
    let wanted = |group: &str| s.only.as_deref().is_none_or(|only| only == group);
    if wanted("calls") {
        eprintln!("bench: actor calls through the host");
        rows.extend(actor_calls(&work, s).await?);
    }
    if wanted("http") {
        eprintln!("bench: HTTP through the httpserver provider");
        rows.extend(http(&work, s).await?);
    }
    if wanted("hop") {
        eprintln!("bench: actor to provider");
        rows.extend(provider_hop(&work, s).await?);
    }
    if wanted("start") {
        eprintln!("bench: start times");
        rows.extend(start_times(&work, s).await?);
    }
    if wanted("recovery") {
        eprintln!("bench: recovery");
        rows.extend(recovery(&work, s).await?);
    }
    if wanted("footprint") {
        eprintln!("bench: footprint");
        rows.extend(footprint(&work, s).await?);
    }
    let _ = std::fs::remove_dir_all(&work.dir);
    Ok(rows)
}

/// Sequential calls on `clients` connections, `total` calls in all.
async fn drive<F, Fut>(clients: usize, total: usize, make: F) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>>> + Send + 'static,
{
    let started = Instant::now();
    let per = total / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(make(per.max(1))))
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

/// The baseline: a raw tokio Unix-socket MessagePack echo, same framing.
#[allow(clippy::disallowed_methods)] // the baseline is a raw tokio socket (BENCHMARKS.md, "Actor call")
async fn raw_echo_server(path: PathBuf) -> Result<()> {
    let listener = tokio::net::UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (r, w) = stream.into_split();
            let mut reader = FrameReader::<_, ControlRequest>::new(r);
            let mut writer = FrameWriter::<_, ControlResponse>::new(w);
            while let Ok(Some(ControlRequest::Call { payload, .. })) = reader.recv().await {
                if writer
                    .send(&ControlResponse::Ok(ControlReply::CallResult(payload)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Passes each request on to the echo at `echo` and its answer back, over
/// one echo connection per client connection: decoding and re-encoding each
/// frame, as any router must, and nothing else.
async fn raw_relay_server(path: PathBuf, echo: PathBuf) -> Result<()> {
    let listener = tokio::net::UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let echo = echo.clone();
        tokio::spawn(async move {
            let Ok((r, w)) = stream.into_std().and_then(wire::socket::split) else {
                return;
            };
            let mut from_client = FrameReader::<_, ControlRequest>::new(r);
            let mut to_client = FrameWriter::<_, ControlResponse>::new(w);
            let Ok((r, w)) =
                std::os::unix::net::UnixStream::connect(&echo).and_then(wire::socket::split)
            else {
                return;
            };
            let mut from_echo = FrameReader::<_, ControlResponse>::new(r);
            let mut to_echo = FrameWriter::<_, ControlRequest>::new(w);
            while let Ok(Some(request)) = from_client.recv().await {
                if to_echo.send(&request).await.is_err() {
                    return;
                }
                let Ok(Some(response)) = from_echo.recv().await else {
                    return;
                };
                if to_client.send(&response).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[allow(clippy::disallowed_methods)] // the baseline is a raw tokio socket (BENCHMARKS.md, "Actor call")
async fn raw_client(
    path: &Path,
) -> Result<(
    FrameReader<tokio::net::unix::OwnedReadHalf, ControlResponse>,
    FrameWriter<tokio::net::unix::OwnedWriteHalf, ControlRequest>,
)> {
    let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
    Ok((FrameReader::new(r), FrameWriter::new(w)))
}

async fn actor_calls(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "calls")?;
    let echo = work.sign("echo.wasm", "bench-echo", &[])?;
    let key = host.client().await?.start_actor(&echo, 64).await?;
    let payload = rmp_serde::to_vec_named(&serde_json::json!({"n": 1, "text": "hello"}))?;
    let raw_path = work.dir.join("raw.sock");
    tokio::spawn(raw_echo_server(raw_path.clone()));
    let other_process_path = work.dir.join("raw-other.sock");
    let _other_process =
        Baseline::spawn(&["--serve-echo".as_ref(), other_process_path.as_os_str()])?;
    let relay_path = work.dir.join("raw-relay.sock");
    let _relay = Baseline::spawn(&[
        "--serve-relay".as_ref(),
        relay_path.as_os_str(),
        other_process_path.as_os_str(),
    ])?;
    for _ in 0..100 {
        if other_process_path.exists() && relay_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let state = host.state.join("host.sock");
    let mut rows = Vec::new();
    for clients in [1usize, 64] {
        let total = if clients == 1 { s.calls / 4 } else { s.calls };
        let per_round = (total / s.rounds).max(clients);
        let (mut ours, mut raw, mut in_process, mut relayed) = (
            Tally::default(),
            Tally::default(),
            Tally::default(),
            Tally::default(),
        );
        for round in 0..s.rounds {
            let through_host = || {
                drive(clients, per_round, |n| {
                    host_echo_calls(state.clone(), key.clone(), payload.clone(), n)
                })
            };
            if round % 2 == 0 {
                ours.add(through_host().await?);
            }
            raw.add(
                drive(clients, per_round, |n| {
                    raw_echo_calls(other_process_path.clone(), payload.clone(), n)
                })
                .await?,
            );
            if clients == 1 {
                in_process.add(
                    drive(1, per_round, |n| {
                        raw_echo_calls(raw_path.clone(), payload.clone(), n)
                    })
                    .await?,
                );
                relayed.add(
                    drive(1, per_round, |n| {
                        raw_echo_calls(relay_path.clone(), payload.clone(), n)
                    })
                    .await?,
                );
            }
            if round % 2 == 1 {
                ours.add(through_host().await?);
            }
        }
        let (h, b) = (ours.summary(), raw.summary());
        if clients == 1 {
            // Both ends in one process: what the sockets and framing cost
            // without a process switch (not a goal's baseline).
            rows.push(row(
                "raw echo p50, server in this process (c=1)",
                us(in_process.summary().p50),
                "us",
                "raw echo p50 (server in another process)",
                us(b.p50),
                "",
                None,
            ));
            // A third process in the path, doing nothing but relay: the
            // floor under any design that routes through `host-core`.
            let relay = relayed.summary().p50;
            rows.push(row(
                "raw echo p50 through a bare relay process (c=1)",
                us(relay),
                "us",
                "raw echo p50 (server in another process)",
                us(b.p50),
                "",
                None,
            ));
            rows.push(row(
                "actor call p50 (c=1), against the relayed echo",
                us(h.p50),
                "us",
                "raw echo p50 through a bare relay process",
                us(relay),
                "",
                None,
            ));
        }
        let c = format!("c={clients}");
        rows.push(row(
            &format!("actor call p50 ({c})"),
            us(h.p50),
            "us",
            "raw echo p50 (server in another process)",
            us(b.p50),
            if clients == 1 { "<= 2.5x" } else { "" },
            (clients == 1).then(|| us(h.p50) <= 2.5 * us(b.p50)),
        ));
        rows.push(row(
            &format!("actor call p99 ({c})"),
            us(h.p99),
            "us",
            "raw echo p99 (server in another process)",
            us(b.p99),
            "",
            None,
        ));
        rows.push(row(
            &format!("actor calls/s ({c})"),
            h.per_sec,
            "calls/s",
            "raw echo round trips/s",
            b.per_sec,
            "",
            None,
        ));
    }
    Ok(rows)
}

/// `n` sequential echo calls (after 20 to warm up) through the host.
async fn host_echo_calls(
    state: PathBuf,
    key: String,
    payload: Vec<u8>,
    n: usize,
) -> Result<Vec<Duration>> {
    let mut c = Client::connect(&state).await?;
    for _ in 0..20 {
        c.call(&key, "Echo.Echo", &payload).await?;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.call(&key, "Echo.Echo", &payload).await?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// A baseline server in another process (this binary, or `nats-server`);
/// killed and reaped when dropped, on error paths too.
struct Baseline(std::process::Child);

impl Baseline {
    fn spawn(args: &[&std::ffi::OsStr]) -> Result<Self> {
        Ok(Self(
            dies_with_bench(Command::new(std::env::current_exe()?).args(args)).spawn()?,
        ))
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes the child get SIGTERM when the bench dies, even by SIGKILL, so a
/// killed bench leaves no host or baseline server behind (a host stops in
/// order on SIGTERM). The signal follows the thread that spawns: the bench
/// spawns these from its main thread and runtime workers, which live as
/// long as it does, or from the blocking thread that also stops the child.
fn dies_with_bench(command: &mut Command) -> &mut Command {
    let bench = nix::unistd::Pid::this();
    // SAFETY: the closure runs in the forked child before exec; it makes
    // two system calls with integer arguments (prctl, getppid), both
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
            // The bench died before the request took effect: do not start.
            if nix::unistd::getppid() != bench {
                return Err(std::io::Error::other("the bench is gone"));
            }
            Ok(())
        })
    }
}

/// `n` sequential calls (after 20 to warm up) to the raw echo at `path`.
async fn raw_echo_calls(path: PathBuf, payload: Vec<u8>, n: usize) -> Result<Vec<Duration>> {
    let (mut r, mut w) = raw_client(&path).await?;
    let request = ControlRequest::Call {
        key: "raw".into(),
        operation: "Echo.Echo".into(),
        payload: Bytes::from(payload),
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        w.send(&request).await?;
        r.recv().await?.context("raw echo closed")?;
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- HTTP

fn serve_bare_hyper(port: u16) -> Result<()> {
    use http_body_util::Full;
    use hyper::{server::conn::http1, service::service_fn, Response};
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `connections` keep-alive connections for `secs`: every request's latency
/// and the wall time.
async fn load(port: u16, connections: usize, secs: f64) -> Result<(Vec<Duration>, Duration)> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                stream.set_nodelay(true)?;
                let request = b"GET /?name=World HTTP/1.1\r\nHost: bench\r\n\r\n";
                let mut buf = vec![0u8; 4096];
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    stream.write_all(request).await?;
                    read_response(&mut stream, &mut buf).await?;
                    samples.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(samples)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

/// Reads one HTTP/1.1 response with a Content-Length body.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        filled += n;
        if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("bad response: {}", head.lines().next().unwrap_or(""));
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let want = end + 4 + len;
            while filled < want {
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let n = stream.read(&mut buf[filled..]).await?;
                if n == 0 {
                    bail!("the server closed the connection");
                }
                filled += n;
            }
            return Ok(());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn http(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "http")?;
    let mut client = host.client().await?;
    let hello = work.sign("hello.wasm", "bench-hello", &["wasmcloud:httpserver"])?;
    let key = client.start_actor(&hello, 64).await?;
    let par = work.par("httpserver-provider", "wasmcloud:httpserver")?;
    let provider = client.start_provider(&par).await?;
    let port = free_port()?;
    client
        .link(
            &key,
            &provider,
            "wasmcloud:httpserver",
            &[("address", format!("127.0.0.1:{port}"))],
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bare_port = free_port()?;
    let bare = Baseline::spawn(&["--serve-hyper".as_ref(), bare_port.to_string().as_ref()])?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    load(port, 8, 0.2).await?; // warm up
    load(bare_port, 8, 0.2).await?;
    // CPU per request is steadier than req/s on a noisy machine: it counts
    // the work, not the time it got.
    let inventory = client.inventory().await?;
    let worker = host
        .pid_of(&inventory, "actor-runtime")
        .context("no worker")?;
    let provider_pid = inventory["providers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["key"] == provider.as_str()))
        .and_then(|p| p["pid"].as_i64())
        .context("no provider pid")? as i32;
    let bare_pid = bare.0.id() as i32;
    let per_round = s.http_secs / s.rounds as f64;
    let (mut ours, mut theirs) = (Tally::default(), Tally::default());
    let (mut worker_cpu, mut provider_cpu, mut bare_cpu) = (0.0, 0.0, 0.0);
    for round in 0..s.rounds {
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let before = (cpu_secs(worker), cpu_secs(provider_pid));
                ours.add(load(port, 64, per_round).await?);
                worker_cpu += cpu_secs(worker) - before.0;
                provider_cpu += cpu_secs(provider_pid) - before.1;
            } else {
                let before = cpu_secs(bare_pid);
                theirs.add(load(bare_port, 64, per_round).await?);
                bare_cpu += cpu_secs(bare_pid) - before;
            }
        }
    }
    drop(bare);
    let (served, bare_served) = (ours.samples.len().max(1), theirs.samples.len().max(1));
    let per_request = |cpu: f64, n: usize| cpu * 1e6 / n as f64;
    let bare_per_request = per_request(bare_cpu, bare_served);
    let (host_load, bare_load) = (ours.summary(), theirs.summary());
    Ok(vec![
        row(
            "HTTP hello req/s (64 conns)",
            host_load.per_sec,
            "req/s",
            "bare hyper req/s",
            bare_load.per_sec,
            ">= 0.5x",
            Some(host_load.per_sec >= 0.5 * bare_load.per_sec),
        ),
        row(
            "HTTP hello p50 (64 conns)",
            us(host_load.p50),
            "us",
            "bare hyper p50",
            us(bare_load.p50),
            "",
            None,
        ),
        row(
            "HTTP hello p99 (64 conns)",
            us(host_load.p99),
            "us",
            "bare hyper p99",
            us(bare_load.p99),
            "",
            None,
        ),
        row(
            "HTTP CPU per request, worker",
            per_request(worker_cpu, served),
            "us",
            "bare hyper CPU per request",
            bare_per_request,
            "",
            None,
        ),
        row(
            "HTTP CPU per request, httpserver provider",
            per_request(provider_cpu, served),
            "us",
            "bare hyper CPU per request",
            bare_per_request,
            "",
            None,
        ),
    ])
}

// ---------------------------------------------------------------- provider hop

/// A minimal NATS client (the text protocol): what wasmCloud pays per hop.
struct Nats {
    stream: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl Nats {
    fn connect(port: u16) -> Result<Self> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        // A responder or server that stops answering fails the baseline
        // instead of hanging the bench.
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        let mut nats = Self { stream, reader };
        nats.stream
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")?;
        nats.expect("PONG")?;
        Ok(nats)
    }

    fn expect(&mut self, what: &str) -> Result<String> {
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line.starts_with("PING") {
                self.stream.write_all(b"PONG\r\n")?;
                continue;
            }
            if line.starts_with(what) {
                return Ok(line.trim_end().to_string());
            }
            if line.is_empty() {
                bail!("NATS closed the connection");
            }
        }
    }

    /// Reads one MSG and its payload: (subject, reply-to, payload).
    fn next_msg(&mut self) -> Result<(String, Option<String>, Vec<u8>)> {
        let head = self.expect("MSG")?;
        let parts: Vec<&str> = head.split_whitespace().collect();
        let (subject, reply, len) = match parts.as_slice() {
            [_, subject, _sid, len] => (subject.to_string(), None, len.parse::<usize>()?),
            [_, subject, _sid, reply, len] => {
                (subject.to_string(), Some(reply.to_string()), len.parse()?)
            }
            _ => bail!("bad MSG line {head}"),
        };
        let mut payload = vec![0; len + 2];
        self.reader.read_exact(&mut payload)?;
        payload.truncate(len);
        Ok((subject, reply, payload))
    }
}

/// Request/reply through a local nats-server: a requester, and a responder
/// on its own thread that echoes. The server is killed and reaped on drop;
/// the responder's thread then sees the connection close and ends.
struct NatsEcho {
    // Dropped after the requester: the server outlives its connections.
    requester: Nats,
    _server: Baseline,
}

impl NatsEcho {
    fn start() -> Result<Self> {
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
        let port = Self::listening_port(&mut server.0, &ports_dir);
        let _ = std::fs::remove_dir_all(&ports_dir);
        let port = port?;
        let mut echo = Self {
            requester: Self::connect(port)?,
            _server: server,
        };
        let mut responder = Self::connect(port)?;
        responder
            .stream
            .write_all(b"SUB bench.echo 1\r\nPING\r\n")?;
        responder.expect("PONG")?;
        std::thread::spawn(move || -> Result<()> {
            loop {
                let (_, reply, payload) = responder.next_msg()?;
                if let Some(reply) = reply {
                    let mut msg = format!("PUB {reply} {}\r\n", payload.len()).into_bytes();
                    msg.extend_from_slice(&payload);
                    msg.extend_from_slice(b"\r\n");
                    responder.stream.write_all(&msg)?;
                }
            }
        });
        echo.requester
            .stream
            .write_all(b"SUB _INBOX.bench 1\r\nPING\r\n")?;
        echo.requester.expect("PONG")?;
        for _ in 0..50 {
            echo.round_trip()?;
        }
        Ok(echo)
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

    /// Connects, retrying while the server starts.
    fn connect(port: u16) -> Result<Nats> {
        let started = Instant::now();
        loop {
            match Nats::connect(port) {
                Ok(c) => return Ok(c),
                Err(_) if started.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request answered; blocks the calling thread.
    fn round_trip(&mut self) -> Result<Duration> {
        self.round_trips(1)
    }

    /// `n` requests, each sent when the last was answered: the time for all.
    fn round_trips(&mut self, n: u32) -> Result<Duration> {
        let payload = [7u8; 16];
        let mut msg = format!("PUB bench.echo _INBOX.bench {}\r\n", payload.len()).into_bytes();
        msg.extend_from_slice(&payload);
        msg.extend_from_slice(b"\r\n");
        let t = Instant::now();
        for _ in 0..n {
            self.requester.stream.write_all(&msg)?;
            self.requester.next_msg()?;
        }
        Ok(t.elapsed())
    }
}

/// The echo component with `count` instances, linked to a fresh keyvalue
/// provider: (actor key, provider key).
async fn kv_component(
    work: &Work,
    client: &mut Client,
    name: &str,
    count: u32,
) -> Result<(String, String)> {
    let component = work.sign("echo_component.wasm", name, &["wasmcloud:keyvalue"])?;
    let key = client.start_actor(&component, count).await?;
    let par = work.par("keyvalue-provider", "wasmcloud:keyvalue")?;
    let provider = client.start_provider(&par).await?;
    client
        .link(&key, &provider, "wasmcloud:keyvalue", &[])
        .await?;
    Ok((key, provider))
}

/// The component's `Forward` payload for one `KeyValue.Get`.
fn kv_get_payload() -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(&serde_json::json!({
        "target": "wasmcloud:keyvalue",
        "operation": "KeyValue.Get",
        "payload": serde_bytes::ByteBuf::from(rmp_serde::to_vec_named("k")?),
    }))?)
}

/// One call through the host, timed.
async fn timed_call(
    client: &mut Client,
    key: &str,
    operation: &str,
    payload: &[u8],
) -> Result<Duration> {
    let t = Instant::now();
    client.call(key, operation, payload).await?;
    Ok(t.elapsed())
}

/// Gets per call in the back-to-back hop figure.
const GETS_BACK_TO_BACK: u8 = 50;

/// Runs one step of the NATS baseline. On an error the baseline stops:
/// `nats` becomes `None` and `why` says what happened, for the rows.
fn nats_step<T>(
    nats: &mut Option<NatsEcho>,
    why: &mut String,
    step: impl FnOnce(&mut NatsEcho) -> Result<T>,
) -> Option<T> {
    match step(nats.as_mut()?) {
        Ok(value) => Some(value),
        Err(e) => {
            eprintln!("bench: the NATS baseline failed: {e:#}");
            *why = format!("NATS: {e:#}");
            *nats = None;
            None
        }
    }
}

/// The actor-to-provider hop, against NATS request/reply, two ways. In
/// both, an untimed call before each timed one wakes `host-core` and the
/// worker, so the two calls whose difference is the hop start alike (the
/// order of timed calls alone moved the figures by half, either way).
/// - alone: one get in a call, less the same call without it, against one
///   NATS request made between such calls. The provider and the NATS
///   server have each idled about 0.4 ms before.
/// - back to back: the cost per get of a call making 51 gets one after
///   another, less the same call making 1 (so both pay the first get's
///   wake-up alike), divided by 50; against 50 NATS requests one after
///   another, after one untimed request, timed together, divided by 50.
///
/// On this VM a process woken after idling pays far more than one that
/// has just run, for the NATS server as much as for us (BENCHMARKS.md).
async fn provider_hop(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "hop")?;
    let mut client = host.client().await?;
    let (key, _) = kv_component(work, &mut client, "bench-component", 4).await?;
    let get = kv_get_payload()?;
    let echo = rmp_serde::to_vec_named(&serde_json::json!({"x": 1}))?;
    let (mut nats, mut no_nats) = match NatsEcho::start() {
        Ok(nats) => (Some(nats), String::new()),
        Err(e) => {
            eprintln!("bench: no NATS baseline: {e:#}");
            (None, format!("NATS: {e:#}"))
        }
    };
    let n = (s.calls / 10).max(50);
    let [mut with_get, mut without, mut repeated, mut repeated_once, mut nats_alone, mut nats_repeated] =
        std::array::from_fn(|_| Vec::with_capacity(n));
    let gets = u32::from(GETS_BACK_TO_BACK);
    // The two ways run in alternating rounds, each its own loop, so that
    // neither's idle spells change the other's. The NATS calls block this
    // runtime thread; nothing else runs on the runtime meanwhile.
    let per_round = n.div_ceil(s.rounds);
    for _ in 0..s.rounds {
        for i in 0..per_round + 20 {
            let _wake = timed_call(&mut client, &key, "Echo", &echo).await?;
            let a = timed_call(&mut client, &key, "Forward", &get).await?;
            let b = timed_call(&mut client, &key, "Echo", &echo).await?;
            let c = nats_step(&mut nats, &mut no_nats, NatsEcho::round_trip);
            if i >= 20 {
                with_get.push(a);
                without.push(b);
                nats_alone.extend(c);
            }
        }
        // Fewer calls, each with many gets.
        for i in 0..per_round.div_ceil(5) + 4 {
            let _wake = timed_call(&mut client, &key, "KvRepeat", &[1]).await?;
            let a = timed_call(&mut client, &key, "KvRepeat", &[GETS_BACK_TO_BACK + 1]).await?;
            let _wake = timed_call(&mut client, &key, "KvRepeat", &[1]).await?;
            let b = timed_call(&mut client, &key, "KvRepeat", &[1]).await?;
            let c = nats_step(&mut nats, &mut no_nats, |nats| {
                nats.round_trip()?;
                nats.round_trips(gets)
            });
            if i >= 4 {
                repeated.push(a);
                repeated_once.push(b);
                nats_repeated.extend(c);
            }
        }
    }
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        percentile(&v, 0.5)
    };
    // A baseline that failed part-way is not reported at all.
    let nats_ok = nats.take().is_some();
    let nats_p50 = |v: Vec<Duration>| (nats_ok && !v.is_empty()).then(|| p50(v));
    let with_get = p50(with_get);
    let without = p50(without);
    let hop_alone = with_get.saturating_sub(without);
    let hop_back_to_back = p50(repeated).saturating_sub(p50(repeated_once)) / gets;
    let nats_alone = nats_p50(nats_alone);
    let nats_back_to_back = nats_p50(nats_repeated).map(|all| all / gets);
    let mut rows = vec![row(
        "call with a keyvalue get p50",
        us(with_get),
        "us",
        "same call without the get p50",
        us(without),
        "",
        None,
    )];
    for (name, hop, baseline_name, baseline) in [
        (
            "actor->provider hop p50 (keyvalue get), alone in a call".to_string(),
            hop_alone,
            "NATS request/reply p50, alone between calls".to_string(),
            nats_alone,
        ),
        (
            format!("actor->provider hop p50 (keyvalue get), {GETS_BACK_TO_BACK} back to back"),
            hop_back_to_back,
            format!("NATS request/reply p50, {GETS_BACK_TO_BACK} back to back"),
            nats_back_to_back,
        ),
    ] {
        rows.push(match baseline {
            Some(nats) => row(
                &name,
                us(hop),
                "us",
                &baseline_name,
                us(nats),
                "<= 0.3x",
                Some(us(hop) <= 0.3 * us(nats)),
            ),
            None => row(&name, us(hop), "us", &no_nats, 0.0, "<= 0.3x", None),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------- start times

fn spawn_true() -> Result<Duration> {
    let t = Instant::now();
    Command::new("/bin/true").status()?;
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

async fn start_times(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let mut host_starts = Vec::new();
    for i in 0..s.starts {
        let (host, took) = Host::start(work, &format!("start{i}"))?;
        host_starts.push(took);
        drop(host);
    }
    let baseline = median(
        (0..s.starts)
            .map(|_| spawn_true())
            .collect::<Result<Vec<_>>>()?,
    );
    let (host, _) = Host::start(work, "starts")?;
    let mut client = host.client().await?;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..s.starts {
        // A new signature is a new content hash: a cold compile.
        let wasm = work.sign("hello.wasm", &format!("cold{i}"), &[])?;
        let t = Instant::now();
        let key = client.start_actor(&wasm, 1).await?;
        cold.push(t.elapsed());
        client
            .request(&ControlRequest::StopActor { key: key.clone() })
            .await?;
        let t = Instant::now();
        client.start_actor(&wasm, 1).await?;
        warm.push(t.elapsed());
        client.request(&ControlRequest::StopActor { key }).await?;
    }
    let par = work.par("keyvalue-provider", "wasmcloud:keyvalue")?;
    // Each start from an archive file the host has not seen: read, gunzip,
    // verify, hash (the binary itself is already in the cache by hash).
    let mut provider_unseen = Vec::new();
    for i in 0..s.starts {
        let copy = work.dir.join(format!("unseen{i}.par"));
        std::fs::copy(&par, &copy)?;
        let t = Instant::now();
        let key = client.start_provider(&copy).await?;
        provider_unseen.push(t.elapsed());
        client
            .request(&ControlRequest::StopProvider {
                key,
                link_name: "default".into(),
            })
            .await?;
    }
    let provider_unseen = median(provider_unseen);
    let mut provider = Vec::new();
    for _ in 0..s.starts {
        let t = Instant::now();
        let key = client.start_provider(&par).await?;
        provider.push(t.elapsed());
        client
            .request(&ControlRequest::StopProvider {
                key,
                link_name: "default".into(),
            })
            .await?;
    }
    let (cold, warm, provider, host_start) = (
        median(cold),
        median(warm),
        median(provider),
        median(host_starts),
    );
    Ok(vec![
        row(
            "actor start, cold compile p50",
            ms(cold),
            "ms",
            "spawn of /bin/true",
            ms(baseline),
            "",
            None,
        ),
        row(
            "actor start, warm (precompiled cache) p50",
            ms(warm),
            "ms",
            "spawn of /bin/true",
            ms(baseline),
            "<= 5 ms",
            Some(ms(warm) <= 5.0),
        ),
        row(
            "provider start (archive to ready) p50",
            ms(provider),
            "ms",
            "spawn of /bin/true",
            ms(baseline),
            "<= 20 ms",
            Some(ms(provider) <= 20.0),
        ),
        row(
            "provider start, archive file not seen before p50",
            ms(provider_unseen),
            "ms",
            "same archive, verified before",
            ms(provider),
            "",
            None,
        ),
        row(
            "host start (to ready) p50",
            ms(host_start),
            "ms",
            "spawn of /bin/true",
            ms(baseline),
            "<= 30 ms",
            Some(ms(host_start) <= 30.0),
        ),
    ])
}

// ---------------------------------------------------------------- recovery

async fn start_many(
    work: &Work,
    client: &mut Client,
    n: usize,
    prefix: &str,
) -> Result<Vec<String>> {
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let wasm = work.sign("echo.wasm", &format!("{prefix}{i}"), &[])?;
        keys.push(client.start_actor(&wasm, 1).await?);
    }
    Ok(keys)
}

async fn recovery(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "recovery")?;
    let mut client = host.client().await?;
    let keys = start_many(work, &mut client, s.recovery_actors, "rec").await?;
    // Baseline: all of them answering once, healthy.
    let t = Instant::now();
    for key in &keys {
        client.call(key, "Echo.Echo", b"\x01").await?;
    }
    let healthy = t.elapsed();
    let inventory = client.inventory().await?;
    let worker = host
        .pid_of(&inventory, "actor-runtime")
        .context("no worker")?;
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let mut pending: Vec<&String> = keys.iter().collect();
    while !pending.is_empty() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the actors did not come back within 60 s");
        }
        let mut still = Vec::new();
        for key in pending {
            if client.call(key, "Echo.Echo", b"\x01").await.is_err() {
                still.push(key);
            }
        }
        pending = still;
    }
    let worker_recovery = t.elapsed();

    let (ckey, _) = kv_component(work, &mut client, "rec-component", 1).await?;
    let get = kv_get_payload()?;
    client.call(&ckey, "Forward", &get).await?;
    let inventory = client.inventory().await?;
    let pid = inventory["providers"][0]["pid"]
        .as_i64()
        .context("no provider pid")? as i32;
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    tokio::time::sleep(Duration::from_millis(1)).await;
    loop {
        if client.call(&ckey, "Forward", &get).await.is_ok() {
            // Only a new process counts (the first call may race the kill).
            let inv = client.inventory().await?;
            if inv["providers"][0]["pid"].as_i64() != Some(pid as i64) {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the provider did not come back");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let provider_recovery = t.elapsed();
    Ok(vec![
        row(
            &format!("worker kill -9 until {} actors serve", keys.len()),
            ms(worker_recovery),
            "ms",
            &format!("{} actors answering once, healthy", keys.len()),
            ms(healthy),
            "<= 1000 ms",
            Some(ms(worker_recovery) <= 1000.0),
        ),
        row(
            "provider kill -9 until it serves",
            ms(provider_recovery),
            "ms",
            "spawn of /bin/true",
            ms(spawn_true()?),
            "",
            None,
        ),
    ])
}

// ---------------------------------------------------------------- footprint

/// User plus system CPU time a process has used, in seconds (0 once gone).
fn cpu_secs(pid: i32) -> f64 {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_sec)
        })
        .unwrap_or(0.0)
}

fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn footprint(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "footprint")?;
    let mut client = host.client().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inventory = client.inventory().await?;
    let host_pid = host.child.id() as i32;
    let worker = host
        .pid_of(&inventory, "actor-runtime")
        .context("no worker")?;
    let launcher = host
        .pid_of(&inventory, "provider-launcher")
        .context("no launcher")?;
    let idle = (rss_mb(host_pid), rss_mb(worker), rss_mb(launcher));
    // Instances: one actor per 10 instances, each called 10 at a time so the
    // worker keeps 10 warm instances of each.
    let actors = (s.footprint_instances / 10).max(1);
    let keys = start_many(work, &mut client, actors, "fp").await?;
    let state = host.state.join("host.sock");
    for key in &keys {
        client
            .request(&ControlRequest::ScaleActor {
                key: key.clone(),
                count: 10,
            })
            .await?;
    }
    let calls: Vec<_> = keys
        .iter()
        .flat_map(|key| (0..10).map(move |_| key.clone()))
        .map(|key| {
            let state = state.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(&state).await?;
                c.call(&key, "Echo.Echo", b"\x01").await
            })
        })
        .collect();
    let mut served = 0;
    for c in calls {
        if c.await?.is_ok() {
            served += 1;
        }
    }
    let loaded = (rss_mb(host_pid), rss_mb(worker), rss_mb(launcher));
    let sleep_rss = {
        let mut child = Command::new("sleep").arg("5").spawn()?;
        std::thread::sleep(Duration::from_millis(50));
        let rss = rss_mb(child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        rss
    };
    Ok(vec![
        row(
            "RSS host-core + launcher, idle",
            idle.0 + idle.2,
            "MB",
            "RSS of `sleep`",
            sleep_rss,
            "<= 30 MB",
            Some(idle.0 + idle.2 <= 30.0),
        ),
        row(
            "RSS worker, idle",
            idle.1,
            "MB",
            "RSS of `sleep`",
            sleep_rss,
            "",
            None,
        ),
        row(
            &format!("RSS host-core, {served} instances"),
            loaded.0,
            "MB",
            "idle",
            idle.0,
            "",
            None,
        ),
        row(
            &format!("RSS worker, {served} instances"),
            loaded.1,
            "MB",
            "idle",
            idle.1,
            &format!("{} instances run", s.footprint_instances),
            Some(served >= s.footprint_instances),
        ),
        row(
            &format!("RSS launcher, {served} instances"),
            loaded.2,
            "MB",
            "idle",
            idle.2,
            "",
            None,
        ),
    ])
}

// ---------------------------------------------------------------- output

fn print_table(rows: &[Row], s: &Settings) {
    println!("| measurement | value | baseline (same run) | ratio | goal |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        let goal = match r.met {
            Some(true) => format!("{} ✔", r.goal),
            Some(false) => format!("{} ✘", r.goal),
            None => r.goal.clone(),
        };
        // A baseline that could not run (no nats-server) has no ratio.
        let (baseline, ratio) = if r.ratio.is_finite() {
            (format!("{:.1}", r.baseline), format!("{:.3}x", r.ratio))
        } else {
            ("(not measured)".to_owned(), "-".to_owned())
        };
        println!(
            "| {} | {:.1} {} | {} {baseline} | {ratio} | {goal} |",
            r.name, r.value, r.unit, r.baseline_name
        );
    }
    if s.smoke {
        println!("\n(smoke run: figures are not meaningful)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_directories_of_gone_benches_are_removed_and_live_ones_kept() {
        // Above the kernel's largest pid (2^22), so no process has it.
        let gone = std::env::temp_dir().join("wasmhost-bench-4194305");
        let live = std::env::temp_dir().join(format!("wasmhost-bench-{}", std::process::id()));
        std::fs::create_dir_all(gone.join("http")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        remove_dead_benches_dirs();
        assert!(!gone.exists(), "the gone bench's directory was removed");
        assert!(live.exists(), "a running bench's directory was kept");
        std::fs::remove_dir_all(live).unwrap();
    }
}
