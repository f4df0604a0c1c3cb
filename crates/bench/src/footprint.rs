//! `footprint`: the resident memory of the host's processes, idle and with
//! 1,000 live instances, against that of `sleep`.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    args::Settings,
    baselines::sleep_rss,
    harness::{rss_mb, start_many, Client, Host, Work},
    report::{row, Row},
};

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
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
    let state = host.socket();
    for key in &keys {
        client.scale_actor(key, 10).await?;
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
    let sleep_rss = sleep_rss()?;
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
