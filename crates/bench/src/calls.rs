//! `calls`: actor calls through the host's control socket, at 1 and 64
//! clients, against the raw echo in another process, in this process and
//! through a bare relay process.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    args::Settings,
    baselines::echo::{raw_echo_calls, raw_echo_server},
    harness::{Baseline, Client, Host, Work},
    report::{row, Row},
    stats::{us, Tally},
};

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
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
    let state = host.socket();
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
