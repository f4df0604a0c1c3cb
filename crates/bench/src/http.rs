//! `http`: the `hello` actor served through the httpserver provider under
//! 64 keep-alive connections, against a bare hyper server under the same
//! load, with the CPU each process spends per request.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use test_support::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    args::Settings,
    harness::{cpu_secs, Baseline, Host, Work},
    report::{row, Row},
    stats::{us, Tally},
};

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let (host, _) = Host::start(work, "http")?;
    let mut client = host.client().await?;
    let hello = work.sign("hello.wasm", "bench-hello", &["wasmcloud:httpserver"])?;
    let key = client.start_actor(&hello, 64).await?;
    let par = work.par("httpserver-provider", "wasmcloud:httpserver")?;
    let provider = client.start_provider(&par).await?;
    let port = free_port();
    client
        .link(
            &key,
            &provider,
            "wasmcloud:httpserver",
            &[("address", format!("127.0.0.1:{port}"))],
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bare_port = free_port();
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

/// `connections` keep-alive connections for `secs`: every request's latency
/// and the wall time.
pub(crate) async fn load(
    port: u16,
    connections: usize,
    secs: f64,
) -> Result<(Vec<Duration>, Duration)> {
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
        filled += read_more(stream, buf, filled).await?;
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
                filled += read_more(stream, buf, filled).await?;
            }
            return Ok(());
        }
    }
}

/// Reads what comes into `buf` after its first `filled` bytes (growing it
/// when full): how many bytes came.
async fn read_more(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    filled: usize,
) -> Result<usize> {
    if filled == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    let n = stream.read(&mut buf[filled..]).await?;
    if n == 0 {
        bail!("the server closed the connection");
    }
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
