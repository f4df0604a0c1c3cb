//! `host-core ctl --nats URL`: the verbs spoken as wasmCloud 0.82's control
//! interface (the `lattice` crate's subjects and payloads), so they work
//! against any 0.82-compatible host. Commands name their host with
//! `--host`; files are sent as absolute paths, which the host reads itself
//! (it must run with `--allow-file-load`); OCI references go as given.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use lattice::{
    ctl::{
        CtlOperationAck, Host, HostInventory, LinkDefinition, LinkDefinitionList,
        RemoveLinkDefinitionRequest, ScaleActorCommand, StartProviderCommand, StopActorCommand,
        StopHostCommand, StopProviderCommand, UpdateActorCommand,
    },
    subjects,
};
use serde::{de::DeserializeOwned, Serialize};

use super::args::{CtlCommand, LinkCommand};

/// How long a request waits for its answer, as wasmCloud's client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `hosts` collects answers.
const GATHER: Duration = Duration::from_secs(1);

pub(crate) async fn ctl(
    url: &str,
    lattice: &str,
    host: Option<String>,
    command: CtlCommand,
) -> Result<()> {
    let host = || {
        host.clone().ok_or_else(|| {
            anyhow!("with --nats, this verb needs --host HOST_ID (see `ctl --nats URL hosts`)")
        })
    };
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
        CtlCommand::Inventory { json } => {
            let host = host()?;
            let inventory: HostInventory = request(
                &client,
                subjects::ctl(lattice, &format!("get.{host}.inv")),
                &(),
            )
            .await?;
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
                request(&client, subjects::ctl(lattice, "get.links"), &()).await?;
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
        CtlCommand::Link {
            command:
                LinkCommand::Put {
                    actor,
                    provider,
                    contract,
                    link_name,
                    values,
                },
        } => {
            let link = LinkDefinition {
                actor_id: actor,
                provider_id: provider,
                link_name,
                contract_id: contract,
                values: super::ctl::link_values(values)?,
            };
            send_command(&client, subjects::ctl(lattice, "linkdefs.put"), &link).await?;
        }
        CtlCommand::Link {
            command:
                LinkCommand::Del {
                    actor,
                    contract,
                    link_name,
                },
        } => {
            let request = RemoveLinkDefinitionRequest {
                actor_id: actor,
                contract_id: contract,
                link_name,
            };
            send_command(&client, subjects::ctl(lattice, "linkdefs.del"), &request).await?;
        }
        CtlCommand::StartActor { actor, count } => {
            scale(&client, lattice, &host()?, reference(&actor)?, count).await?;
        }
        CtlCommand::ScaleActor { key, count } => {
            scale(&client, lattice, &host()?, key, count).await?;
        }
        CtlCommand::UpdateActor { key, actor } => {
            let host_id = host()?;
            let update = UpdateActorCommand {
                actor_id: key,
                annotations: None,
                host_id: host_id.clone(),
                new_actor_ref: reference(&actor)?,
            };
            send_command(&client, cmd(lattice, &host_id, "upd"), &update).await?;
        }
        CtlCommand::StopActor { key } => {
            let host_id = host()?;
            let stop = StopActorCommand {
                actor_ref: key,
                annotations: None,
                host_id: host_id.clone(),
            };
            send_command(&client, cmd(lattice, &host_id, "sa"), &stop).await?;
        }
        CtlCommand::StartProvider {
            archive,
            link_name,
            config,
        } => {
            let host_id = host()?;
            let start = StartProviderCommand {
                annotations: None,
                configuration: Some(config),
                host_id: host_id.clone(),
                link_name,
                provider_ref: reference(&archive)?,
            };
            send_command(&client, cmd(lattice, &host_id, "lp"), &start).await?;
        }
        CtlCommand::StopProvider { key, link_name } => {
            let host_id = host()?;
            let stop = StopProviderCommand {
                annotations: None,
                contract_id: String::new(),
                host_id: host_id.clone(),
                link_name,
                provider_ref: key,
            };
            send_command(&client, cmd(lattice, &host_id, "sp"), &stop).await?;
        }
        CtlCommand::StopHost => {
            let host_id = host()?;
            let stop = StopHostCommand {
                host_id: host_id.clone(),
                timeout: None,
            };
            send_command(&client, cmd(lattice, &host_id, "stop"), &stop).await?;
        }
        CtlCommand::Call { .. } | CtlCommand::Events { .. } => bail!(
            "`call` and `events` go to one host's socket (without --nats); over NATS, watch wasmbus.evt.{lattice}"
        ),
    }
    Ok(())
}

/// `cmd.{host}.scale`: starts the actor a reference names, or scales the
/// running one (0 stops it).
async fn scale(
    client: &async_nats::Client,
    lattice: &str,
    host_id: &str,
    actor_ref: String,
    count: u32,
) -> Result<()> {
    let scale = ScaleActorCommand {
        actor_ref,
        annotations: None,
        max_instances: count,
        host_id: host_id.to_owned(),
    };
    send_command(client, cmd(lattice, host_id, "scale"), &scale).await
}

fn cmd(lattice: &str, host: &str, verb: &str) -> String {
    subjects::ctl(lattice, &format!("cmd.{host}.{verb}"))
}

/// What the host is told to load: an OCI reference as given, a file as
/// its absolute path (which the host reads itself).
fn reference(input: &str) -> Result<String> {
    match oci::classify(input)? {
        oci::Source::Oci(_) => Ok(input.to_owned()),
        oci::Source::File(file) => {
            let path = std::fs::canonicalize(&file)
                .with_context(|| format!("cannot find {}", file.display()))?;
            Ok(path.display().to_string())
        }
    }
}

/// Sends a command; an ack refusing it is the error. Commands are acked
/// when accepted and finish in the background (their events say how).
async fn send_command<T: Serialize>(
    client: &async_nats::Client,
    subject: String,
    body: &T,
) -> Result<()> {
    let ack: CtlOperationAck = request(client, subject.clone(), body).await?;
    if !ack.accepted {
        bail!("refused: {}", ack.error);
    }
    println!("accepted");
    Ok(())
}

/// One request and its answer; `()` sends an empty body.
async fn request<T: DeserializeOwned, B: Serialize>(
    client: &async_nats::Client,
    subject: String,
    body: &B,
) -> Result<T> {
    let body = match serde_json::to_value(body)? {
        serde_json::Value::Null => Vec::new(),
        value => serde_json::to_vec(&value)?,
    };
    let reply = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.request(subject.clone(), body.into()),
    )
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
