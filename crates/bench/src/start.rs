//! `start`: how long a host, an actor (compiled, and from the cache) and a
//! provider take to start, against the spawn of `/bin/true`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    args::Settings,
    baselines::spawn_true,
    harness::{Client, Host, Work},
    report::{row, Row},
    stats::{median, ms},
};

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
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
        client.stop_actor(&key).await?;
        let t = Instant::now();
        client.start_actor(&wasm, 1).await?;
        warm.push(t.elapsed());
        client.stop_actor(&key).await?;
    }
    let par = work.par("keyvalue-provider", "wasmcloud:keyvalue")?;
    // Each start from an archive file the host has not seen: read, gunzip,
    // verify, hash (the binary itself is already in the cache by hash).
    let mut provider_unseen = Vec::new();
    for i in 0..s.starts {
        let copy = work.dir.join(format!("unseen{i}.par"));
        std::fs::copy(&par, &copy)?;
        provider_unseen.push(provider_start(&mut client, &copy).await?);
    }
    let provider_unseen = median(provider_unseen);
    let mut provider = Vec::new();
    for _ in 0..s.starts {
        provider.push(provider_start(&mut client, &par).await?);
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

/// How long the provider in `par` took to start (it is stopped again).
async fn provider_start(client: &mut Client, par: &Path) -> Result<Duration> {
    let t = Instant::now();
    let key = client.start_provider(par).await?;
    let took = t.elapsed();
    client.stop_provider(&key).await?;
    Ok(took)
}
