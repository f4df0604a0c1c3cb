//! `lattice`: calls that cross hosts over NATS, against a raw NATS
//! request/reply measured in the same run (the floor), and the local call
//! on a host that joined a lattice against the same call on a host alone.
//!
//! Hosts A and B join one lattice through a `nats-server` with JetStream;
//! the echo actor runs on B. A cross-host call goes in through A's control
//! socket, crosses NATS as a signed `Invocation` to B, and comes back. The
//! cross-host HTTP path is a GET into A's httpserver provider, linked to
//! the hello actor on B. Signing and verifying one invocation are timed on
//! their own, in this process.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use test_support::{free_port, NatsServer};

use crate::{
    args::Settings,
    baselines::nats::NatsEcho,
    harness::{Client, Host, Work},
    http::load,
    report::{row, Row},
    stats::{percentile, us, Tally},
};

/// How long the lattice may take to learn of an actor or a link.
const SETTLE: Duration = Duration::from_secs(20);

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let nats = NatsServer::start("bench");
    let url = nats.url();
    let seed = nkeys::KeyPair::new_cluster()
        .seed()
        .map_err(|e| anyhow::anyhow!("cluster seed: {e}"))?;
    let member = [
        "--nats",
        &url,
        "--lattice",
        "bench",
        "--cluster-seed",
        &seed,
    ];
    let (a, _) = Host::start_with(work, "lattice-a", &member)?;
    let (b, _) = Host::start_with(work, "lattice-b", &member)?;
    let (alone, _) = Host::start(work, "lattice-alone")?;
    let echo = work.sign("echo.wasm", "bench-lattice-echo", &[])?;
    let key = b.client().await?.start_actor(&echo, 16).await?;
    alone.client().await?.start_actor(&echo, 16).await?;
    let payload = rmp_serde::to_vec_named(&serde_json::json!({"n": 1, "text": "hello"}))?;
    let mut from_a = a.client().await?;
    let mut on_b = b.client().await?;
    let mut on_alone = alone.client().await?;
    let deadline = Instant::now() + SETTLE;
    while let Err(e) = from_a.call(&key, "Echo.Echo", &payload).await {
        if Instant::now() > deadline {
            bail!("host A cannot call the actor on B within {SETTLE:?}: {e:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut nats_echo = NatsEcho::start()?;

    let n = (s.calls / 20).max(50);
    let per_round = n.div_ceil(s.rounds);
    let [mut cross, mut local_member, mut local_alone, mut raw] =
        std::array::from_fn(|_| Vec::with_capacity(n));
    for _ in 0..s.rounds {
        for i in 0..per_round + 10 {
            let c = timed(&mut from_a, &key, &payload).await?;
            let m = timed(&mut on_b, &key, &payload).await?;
            let l = timed(&mut on_alone, &key, &payload).await?;
            let r = nats_echo.round_trip()?;
            if i >= 10 {
                cross.push(c);
                local_member.push(m);
                local_alone.push(l);
                raw.push(r);
            }
        }
    }

    // HTTP into A, served by hello on B.
    let mut on_a = a.client().await?;
    let hello = work.sign(
        "hello.wasm",
        "bench-lattice-hello",
        &["wasmcloud:httpserver"],
    )?;
    let hello_key = on_b.start_actor(&hello, 16).await?;
    let par = work.par("httpserver-provider", "wasmcloud:httpserver")?;
    let provider = on_a.start_provider(&par).await?;
    let port = free_port();
    on_a.link(
        &hello_key,
        &provider,
        "wasmcloud:httpserver",
        &[("address", format!("127.0.0.1:{port}"))],
    )
    .await?;
    let deadline = Instant::now() + SETTLE;
    while !load(port, 1, 0.05)
        .await
        .is_ok_and(|(samples, _)| !samples.is_empty())
    {
        if Instant::now() > deadline {
            bail!("HTTP into host A does not reach hello on B within {SETTLE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut http = Tally::default();
    let mut http_raw = Vec::new();
    let http_secs = (s.http_secs / 4.0).max(0.2) / s.rounds as f64;
    for _ in 0..s.rounds {
        http.add(load(port, 1, http_secs).await?);
        for _ in 0..per_round {
            http_raw.push(nats_echo.round_trip()?);
        }
    }
    let http = http.summary();

    let (sign, verify) = signing_cost(n.max(200))?;
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        percentile(&v, 0.5)
    };
    let (cross, local_member, local_alone, raw, http_raw) = (
        p50(cross),
        p50(local_member),
        p50(local_alone),
        p50(raw),
        p50(http_raw),
    );
    drop(nats);
    Ok(vec![
        row(
            "cross-host actor call p50 (A -> NATS -> actor on B)",
            us(cross),
            "us",
            "NATS request/reply p50",
            us(raw),
            "<= 1.5x",
            Some(us(cross) <= 1.5 * us(raw)),
        ),
        row(
            "cross-host HTTP p50 (httpserver on A -> hello on B, 1 conn)",
            us(http.p50),
            "us",
            "NATS request/reply p50",
            us(http_raw),
            "",
            None,
        ),
        row(
            "actor call p50 (c=1), host in a lattice, actor local",
            us(local_member),
            "us",
            "same call, host alone",
            us(local_alone),
            "",
            None,
        ),
        row(
            "sign one invocation (cluster key)",
            us(sign),
            "us",
            "NATS request/reply p50",
            us(raw),
            "",
            None,
        ),
        row(
            "verify one invocation (claims, issuer, hash)",
            us(verify),
            "us",
            "NATS request/reply p50",
            us(raw),
            "",
            None,
        ),
    ])
}

async fn timed(client: &mut Client, key: &str, payload: &[u8]) -> Result<Duration> {
    let t = Instant::now();
    client.call(key, "Echo.Echo", payload).await?;
    Ok(t.elapsed())
}

/// The mean time to sign one invocation of a 1 KiB payload, and to verify
/// one, over `n` of each.
fn signing_cost(n: usize) -> Result<(Duration, Duration)> {
    use lattice::rpc::{Invocation, WasmCloudEntity};
    let cluster = nkeys::KeyPair::new_cluster();
    let host = nkeys::KeyPair::new_server().public_key();
    let issuers = vec![cluster.public_key()];
    let actor = nkeys::KeyPair::new_module().public_key();
    let msg = vec![7u8; 1024];
    let t = Instant::now();
    let invocations = (0..n)
        .map(|_| {
            Invocation::new(
                &cluster,
                &host,
                WasmCloudEntity::actor(&actor),
                WasmCloudEntity::actor(&actor),
                "Echo.Echo",
                msg.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .context("signing an invocation")?;
    let sign = t.elapsed() / n as u32;
    let t = Instant::now();
    for invocation in &invocations {
        invocation
            .validate(&issuers)
            .context("verifying an invocation")?;
    }
    let verify = t.elapsed() / n as u32;
    Ok((sign, verify))
}
