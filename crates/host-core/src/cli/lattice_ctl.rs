//! `host-core ctl --nats URL`: the verbs that ask a lattice, spoken as
//! wasmCloud 0.82's control interface (the `lattice` crate's subjects and
//! payloads), so they work against any 0.82-compatible host.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use lattice::{
    ctl::{Host, HostInventory, LinkDefinitionList},
    subjects,
};
use serde::de::DeserializeOwned;

use super::args::{CtlCommand, LinkCommand};

/// How long a request waits for its answer, as wasmCloud's client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `hosts` collects answers.
const GATHER: Duration = Duration::from_secs(1);

pub(crate) async fn ctl(url: &str, lattice: &str, command: CtlCommand) -> Result<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST_TIMEOUT)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    match command {
        CtlCommand::Hosts { json } => {
            let mut hosts: Vec<Host> =
                gather(&client, subjects::ctl(lattice, "ping.hosts")).await?;
            hosts.sort_by(|a, b| a.id.cmp(&b.id));
            if json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else if hosts.is_empty() {
                println!("no host answered in lattice {lattice}");
            } else {
                for host in hosts {
                    let labels = host
                        .labels
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    println!(
                        "{}  {}  up {}  {}",
                        host.id,
                        host.friendly_name,
                        host.uptime_human.unwrap_or_default(),
                        labels
                    );
                }
            }
        }
        CtlCommand::Inventory {
            json,
            host: Some(host),
        } => {
            let inventory: HostInventory =
                request(&client, subjects::ctl(lattice, &format!("get.{host}.inv"))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inventory)?);
            } else {
                println!("host {} ({})", inventory.host_id, inventory.friendly_name);
                for actor in &inventory.actors {
                    let count: u32 = actor.instances.iter().map(|i| i.max_instances).sum();
                    println!(
                        "actor    {}  {}  x{count}",
                        actor.id,
                        actor.name.clone().unwrap_or_default()
                    );
                }
                for provider in &inventory.providers {
                    println!(
                        "provider {}  {}  {}",
                        provider.id, provider.contract_id, provider.link_name
                    );
                }
            }
        }
        CtlCommand::Link {
            command: LinkCommand::Ls { json },
        } => {
            let links: LinkDefinitionList =
                request(&client, subjects::ctl(lattice, "get.links")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&links.links)?);
            } else {
                for link in links.links {
                    println!(
                        "{} -> {}  {}  {}",
                        link.actor_id, link.provider_id, link.contract_id, link.link_name
                    );
                }
            }
        }
        _ => bail!(
            "over --nats, ctl speaks `hosts`, `inventory --host HOST_ID` and `link ls`; other verbs go to one host's socket (without --nats)"
        ),
    }
    Ok(())
}

async fn request<T: DeserializeOwned>(client: &async_nats::Client, subject: String) -> Result<T> {
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject.clone(), "".into()))
        .await
        .map_err(|_| anyhow!("no answer on {subject} within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| anyhow!("no answer on {subject}: {e}"))?;
    serde_json::from_slice(&reply.payload)
        .with_context(|| format!("the answer on {subject} is not what the protocol says"))
}

/// Every answer to a publish within [`GATHER`].
async fn gather<T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
) -> Result<Vec<T>> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject.clone(), inbox, "".into())
        .await?;
    client.flush().await?;
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, answers.next()).await {
        match serde_json::from_slice(&message.payload) {
            Ok(answer) => found.push(answer),
            Err(e) => eprintln!("warning: an answer on {subject} was not understood: {e}"),
        }
    }
    Ok(found)
}
