//! `recovery`: how long until every actor serves again after the worker is
//! killed, and until a killed provider serves again.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{
    args::Settings,
    baselines::spawn_true,
    harness::{kv_component, kv_get_payload, start_many, Host, Work},
    report::{row, Row},
    stats::ms,
};

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
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
