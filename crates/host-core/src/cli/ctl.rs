//! `host-core ctl`: each verb as a control request to a running host, and
//! the printing of its answer.

use anyhow::{anyhow, bail, Context, Result};
use wire::{
    control::{Artifact, ControlReply, ControlRequest, Inventory},
    Bytes,
};

use host_core::{
    control,
    paths::{self, StatePaths},
};

use super::args::{CtlArgs, CtlCommand, LinkCommand};

/// An actor named on the command line: an OCI reference the host pulls,
/// or a file whose wasm the control channel carries whole (a regular file
/// of at most [`wire::MAX_PAYLOAD`] bytes).
fn actor_artifact(input: &str) -> Result<Artifact> {
    match oci::classify(input)? {
        oci::Source::Oci(_) => Ok(Artifact::Reference(input.to_owned())),
        oci::Source::File(path) => {
            let bytes = host_core::par::read_regular_file(&path, wire::MAX_PAYLOAD as u64)
                .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
            Ok(Artifact::Bytes(Bytes::from(bytes)))
        }
    }
}

/// A provider archive named on the command line: an OCI reference, or a
/// file the host reads (so its absolute path).
fn archive_artifact(input: &str) -> Result<Artifact> {
    match oci::classify(input)? {
        oci::Source::Oci(_) => Ok(Artifact::Reference(input.to_owned())),
        oci::Source::File(path) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("cannot find {}", path.display()))?;
            Ok(Artifact::Path(path.display().to_string()))
        }
    }
}

/// `KEY=VALUE` link values.
pub(super) fn link_values(
    values: Vec<String>,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for pair in values {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("link value `{pair}` is not KEY=VALUE"))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

pub(crate) async fn ctl(args: CtlArgs) -> Result<()> {
    if let Some(url) = &args.nats {
        return super::lattice_ctl::ctl(url, &args.lattice, args.host, args.command).await;
    }
    if args.host.is_some() {
        bail!("--host names a host of a lattice: give --nats URL too");
    }
    let state = paths::state_dir(args.state_dir)?;
    let run = paths::runtime_dir(args.runtime_dir, &state);
    let paths = StatePaths::new(state, run);
    let mut client = control::ControlClient::connect(&paths.control_socket()).await?;
    let (request, json_inventory) = match args.command {
        CtlCommand::Inventory { json } => (ControlRequest::Inventory, json),
        CtlCommand::Hosts { .. } => bail!("`hosts` asks a lattice: give --nats URL"),
        CtlCommand::StartActor { actor, count } => (
            ControlRequest::StartActor {
                actor: actor_artifact(&actor)?,
                count,
            },
            false,
        ),
        CtlCommand::ScaleActor { key, count } => (ControlRequest::ScaleActor { key, count }, false),
        CtlCommand::UpdateActor { key, actor } => (
            ControlRequest::UpdateActor {
                key,
                actor: actor_artifact(&actor)?,
            },
            false,
        ),
        CtlCommand::StopActor { key } => (ControlRequest::StopActor { key }, false),
        CtlCommand::Call {
            key,
            operation,
            json,
        } => {
            let payload = match json {
                Some(text) => {
                    let value: serde_json::Value =
                        serde_json::from_str(&text).context("the payload is not valid JSON")?;
                    rmp_serde::to_vec_named(&value)?
                }
                None => Vec::new(),
            };
            (
                ControlRequest::Call {
                    key,
                    operation,
                    payload: Bytes::from(payload),
                },
                false,
            )
        }
        CtlCommand::StopHost => (ControlRequest::StopHost, false),
        CtlCommand::StartProvider {
            archive,
            link_name,
            config,
        } => (
            ControlRequest::StartProvider {
                archive: archive_artifact(&archive)?,
                link_name,
                config_json: config,
            },
            false,
        ),
        CtlCommand::StopProvider { key, link_name } => {
            (ControlRequest::StopProvider { key, link_name }, false)
        }
        CtlCommand::Events { follow } => {
            let mut reply = client.request(&ControlRequest::Events { follow }).await?;
            loop {
                if let ControlReply::Events(events) = reply {
                    for event in events {
                        println!("{event}");
                    }
                }
                if !follow {
                    return Ok(());
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                reply = match client.next_reply().await {
                    Ok(reply) => reply,
                    // The host stopped: the stream ends there.
                    Err(_) => return Ok(()),
                };
            }
        }
        CtlCommand::Link { command } => match command {
            LinkCommand::Put {
                actor,
                provider,
                contract,
                link_name,
                values,
            } => (
                ControlRequest::LinkPut(wire::provider::Link {
                    actor_id: actor,
                    provider_id: provider,
                    contract_id: contract,
                    link_name,
                    values: link_values(values)?,
                }),
                false,
            ),
            LinkCommand::Del {
                actor,
                contract,
                link_name,
            } => (
                ControlRequest::LinkDel {
                    actor_id: actor,
                    contract_id: contract,
                    link_name,
                },
                false,
            ),
            LinkCommand::Ls { json } => (ControlRequest::LinkList, json),
        },
    };
    match client.request(&request).await? {
        ControlReply::Done => {}
        ControlReply::ActorStarted { key } => println!("{key}"),
        ControlReply::CallResult(bytes) => print_reply(&bytes)?,
        ControlReply::Inventory(inventory) => print_inventory(&inventory, json_inventory)?,
        ControlReply::ProviderStarted { key } => println!("{key}"),
        ControlReply::Events(events) => {
            for event in events {
                println!("{event}");
            }
        }
        ControlReply::Links(links) => {
            if json_inventory {
                println!("{}", serde_json::to_string_pretty(&links)?);
            } else if links.is_empty() {
                println!("No links.");
            } else {
                println!(
                    "{:<56}  {:<56}  {:<24} {:<10} VALUES",
                    "ACTOR", "PROVIDER", "CONTRACT", "LINK NAME"
                );
                for l in links {
                    let values: Vec<String> =
                        l.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<56}  {:<56}  {:<24} {:<10} {}",
                        l.actor_id,
                        l.provider_id,
                        l.contract_id,
                        l.link_name,
                        values.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Prints an actor's reply as JSON when it is MessagePack, else as text.
fn print_reply(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut cursor = bytes;
    match rmpv::decode::read_value(&mut cursor) {
        Ok(value) if cursor.is_empty() => println!("{}", msgpack_to_json(value)),
        _ => {
            std::io::stdout().write_all(bytes)?;
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                println!();
            }
        }
    }
    Ok(())
}

fn msgpack_to_json(value: rmpv::Value) -> serde_json::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    match value {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .unwrap_or(J::Null),
        M::F32(f) => J::from(f64::from(f)),
        M::F64(f) => J::from(f),
        M::String(s) => J::String(s.into_str().unwrap_or_default()),
        // Bytes show as text when they are UTF-8 (an HTTP body, say).
        M::Binary(b) => match String::from_utf8(b) {
            Ok(text) => J::String(text),
            Err(e) => J::Array(e.into_bytes().into_iter().map(J::from).collect()),
        },
        M::Array(items) => J::Array(items.into_iter().map(msgpack_to_json).collect()),
        M::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) => s.into_str().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (key, msgpack_to_json(v))
                })
                .collect(),
        ),
        M::Ext(_, data) => J::Array(data.into_iter().map(J::from).collect()),
    }
}

fn print_inventory(inventory: &Inventory, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inventory_json(inventory))?
        );
        return Ok(());
    }
    println!(
        "Host {}  (up {} s)",
        inventory.host_id, inventory.uptime_secs
    );
    println!();
    println!("{:<16} {:>8} {:>9}  STATE", "PROCESS", "PID", "RESTARTS");
    for p in &inventory.processes {
        let pid = p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!("{:<16} {:>8} {:>9}  {}", p.name, pid, p.restarts, p.state);
    }
    println!();
    if inventory.providers.is_empty() {
        println!("No providers.");
    } else {
        println!(
            "{:<56}  {:<20} {:<10} {:<24} {:>8} {:<11} HEALTH",
            "PROVIDER", "NAME", "LINK NAME", "CONTRACT", "PID", "STATE"
        );
        for p in &inventory.providers {
            let pid = p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<56}  {:<20} {:<10} {:<24} {:>8} {:<11} {}",
                p.key, p.name, p.link_name, p.contract_id, pid, p.state, p.health
            );
            print_image_ref(p.image_ref.as_deref());
        }
    }
    println!();
    if inventory.actors.is_empty() {
        println!("No actors.");
    } else {
        println!(
            "{:<56}  {:<20} {:<9} {:>5}  CAPS",
            "ACTOR", "NAME", "KIND", "COUNT"
        );
        for a in &inventory.actors {
            let kind = match a.kind {
                wire::control::ActorKind::Module => "module",
                wire::control::ActorKind::Component => "component",
            };
            println!(
                "{:<56}  {:<20} {:<9} {:>5}  {}",
                a.key,
                a.name,
                kind,
                a.count,
                a.caps.join(",")
            );
            print_image_ref(a.image_ref.as_deref());
        }
    }
    Ok(())
}

/// The reference an actor or provider was pulled from, under its row.
fn print_image_ref(image_ref: Option<&str>) {
    if let Some(image_ref) = image_ref {
        println!("  from {image_ref}");
    }
}

fn inventory_json(inventory: &Inventory) -> serde_json::Value {
    serde_json::json!({
        "host_id": inventory.host_id,
        "uptime_secs": inventory.uptime_secs,
        "processes": inventory.processes.iter().map(|p| serde_json::json!({
            "name": p.name, "pid": p.pid, "restarts": p.restarts, "state": p.state.as_str(),
        })).collect::<Vec<_>>(),
        "actors": inventory.actors.iter().map(|a| serde_json::json!({
            "key": a.key,
            "name": a.name,
            "kind": match a.kind { wire::control::ActorKind::Module => "module", wire::control::ActorKind::Component => "component" },
            "issuer": a.issuer,
            "rev": a.rev,
            "ver": a.ver,
            "call_alias": a.call_alias,
            "caps": a.caps,
            "count": a.count,
            "image_ref": a.image_ref,
        })).collect::<Vec<_>>(),
        "providers": inventory.providers.iter().map(|p| serde_json::json!({
            "key": p.key,
            "name": p.name,
            "link_name": p.link_name,
            "contract_id": p.contract_id,
            "pid": p.pid,
            "state": p.state.as_str(),
            "health": p.health,
            "restarts": p.restarts,
            "image_ref": p.image_ref,
        })).collect::<Vec<_>>(),
    })
}
