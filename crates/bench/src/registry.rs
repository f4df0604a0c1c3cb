//! `registry`: starting an actor by OCI reference from a real
//! `docker-registry` on loopback, cold (manifest and layer downloaded) and
//! by digest from the host's cache, beside the start from a file measured
//! in the same run. The compile is warm in all three, so the rows show
//! what fetching costs.

use std::time::Instant;

use anyhow::Result;
use test_support::registry::Registry;
use wire::control::Artifact;

use crate::{
    args::Settings,
    harness::{Host, Work},
    report::{row, Row},
    stats::{median, ms},
};

pub(crate) async fn run(work: &Work, s: &Settings) -> Result<Vec<Row>> {
    let registry = Registry::start();
    let (host, _) = Host::start_with(
        work,
        "registry",
        &["--oci-allowed-insecure", &registry.addr],
    )?;
    let mut client = host.client().await?;
    let (mut file, mut cold, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..s.starts {
        // New content each round, so the registry start downloads it.
        let wasm = work.sign("hello.wasm", &format!("oci{i}"), &[])?;
        let tag = format!("{}/bench/hello{i}:0.1.0", registry.addr);
        let pushed = work.host_core(&[
            "push".into(),
            tag.clone(),
            wasm.display().to_string(),
            "--insecure".into(),
        ])?;
        let digest = pushed.rsplit(' ').next().unwrap_or_default().to_owned();
        let pinned = format!("{}/bench/hello{i}@{digest}", registry.addr);
        // The first start compiles; the three measured ones find it compiled.
        let key = client.start_actor(&wasm, 1).await?;
        client.stop_actor(&key).await?;
        let t = Instant::now();
        client.start_actor(&wasm, 1).await?;
        file.push(t.elapsed());
        client.stop_actor(&key).await?;
        let t = Instant::now();
        client.start_actor_from(Artifact::Reference(tag), 1).await?;
        cold.push(t.elapsed());
        client.stop_actor(&key).await?;
        let t = Instant::now();
        client
            .start_actor_from(Artifact::Reference(pinned), 1)
            .await?;
        cached.push(t.elapsed());
        client.stop_actor(&key).await?;
    }
    let (file, cold, cached) = (median(file), median(cold), median(cached));
    Ok(vec![
        row(
            "actor start from a registry by tag, not cached p50",
            ms(cold),
            "ms",
            "actor start from a file",
            ms(file),
            "",
            None,
        ),
        row(
            "actor start by digest, from the host's cache p50",
            ms(cached),
            "ms",
            "actor start from a file",
            ms(file),
            "",
            None,
        ),
    ])
}
