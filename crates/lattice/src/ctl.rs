//! The control interface's JSON payloads, as wasmCloud 0.82 and
//! `wasmcloud-control-interface` 0.33 read and write them. Readers are
//! lenient as 0.33's (unknown fields ignored, most fields defaulted);
//! writers skip the optional fields that are absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;
pub type Annotations = BTreeMap<String, String>;

/// The answer to every command: `{"accepted": bool, "error": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtlOperationAck {
    #[serde(default)]
    pub accepted: bool,
    #[serde(default)]
    pub error: String,
}

impl CtlOperationAck {
    pub fn ok() -> Self {
        Self {
            accepted: true,
            error: String::new(),
        }
    }

    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            accepted: false,
            error: error.into(),
        }
    }
}

/// One host's answer to `ping.hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub friendly_name: String,
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Comma-joined cluster issuer keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_issuers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctl_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lattice: Option<String>,
    /// 0.82 repeats the lattice here for older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lattice_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_human: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The host's cluster key (0.82 sends it; 0.33 ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// `get.{host}.inv`, and the heartbeat's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    #[serde(default)]
    pub actors: Vec<ActorDescription>,
    #[serde(default)]
    pub providers: Vec<ProviderDescription>,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub issuer: String,
    #[serde(default)]
    pub friendly_name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub uptime_human: String,
    #[serde(default)]
    pub uptime_seconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorDescription {
    #[serde(default, alias = "public_key")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    #[serde(default)]
    pub instances: Vec<ActorInstance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub revision: i32,
    #[serde(default)]
    pub max_instances: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderDescription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default, alias = "public_key")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    #[serde(default)]
    pub contract_id: String,
    #[serde(default)]
    pub link_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub revision: i32,
}

/// A link, in `linkdefs.put`, `get.links`, events and the key-value state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDefinition {
    #[serde(default)]
    pub actor_id: String,
    #[serde(default)]
    pub provider_id: String,
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub contract_id: String,
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDefinitionList {
    #[serde(default)]
    pub links: Vec<LinkDefinition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveLinkDefinitionRequest {
    #[serde(default)]
    pub actor_id: String,
    #[serde(default)]
    pub contract_id: String,
    #[serde(default)]
    pub link_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetClaimsResponse {
    #[serde(default)]
    pub claims: Vec<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleActorCommand {
    #[serde(default)]
    pub actor_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    /// Written `count` on the wire; 0 stops the actor.
    #[serde(default, rename = "count", alias = "max_instances")]
    pub max_instances: u32,
    #[serde(default)]
    pub host_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopActorCommand {
    #[serde(default)]
    pub actor_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default)]
    pub host_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateActorCommand {
    #[serde(default)]
    pub actor_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub new_actor_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartProviderCommand {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<String>,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub provider_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopProviderCommand {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default)]
    pub contract_id: String,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub provider_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopHostCommand {
    #[serde(default)]
    pub host_id: String,
    /// Milliseconds, as the 0.82 host reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLabel {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorAuctionRequest {
    #[serde(default)]
    pub actor_ref: String,
    #[serde(default)]
    pub constraints: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorAuctionAck {
    #[serde(default)]
    pub actor_ref: String,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub constraints: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderAuctionRequest {
    #[serde(default)]
    pub constraints: Labels,
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub provider_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderAuctionAck {
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub provider_ref: String,
    #[serde(default)]
    pub constraints: Labels,
}

/// Whether every constraint names a label this host has with that value.
pub fn satisfies(labels: &Labels, constraints: &Labels) -> bool {
    constraints
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// `registries.put`: credentials by registry host.
pub type RegistryCredentialMap = BTreeMap<String, RegistryCredential>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(rename = "registryType", default = "oci")]
    pub registry_type: String,
}

fn oci() -> String {
    "oci".to_owned()
}

/// `get.config.{entity}.{key}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetConfigKeyResponse {
    pub found: bool,
    /// The bytes, as a JSON array of numbers.
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_0_33_writes_them() {
        let scale: ScaleActorCommand =
            serde_json::from_str(r#"{"actor_ref":"/tmp/echo.wasm","count":3,"host_id":"NH"}"#)
                .unwrap();
        assert_eq!(scale.max_instances, 3);
        assert_eq!(scale.annotations, None);
        assert_eq!(
            serde_json::to_string(&scale).unwrap(),
            r#"{"actor_ref":"/tmp/echo.wasm","count":3,"host_id":"NH"}"#
        );
        let lp: StartProviderCommand = serde_json::from_str(
            r#"{"annotations":{"a":"b"},"host_id":"NH","link_name":"default","provider_ref":"file:///p.par.gz"}"#,
        )
        .unwrap();
        assert_eq!(lp.configuration, None);
        assert_eq!(lp.annotations.unwrap()["a"], "b");
        let stop: StopHostCommand =
            serde_json::from_str(r#"{"host_id":"NH","timeout":500}"#).unwrap();
        assert_eq!(stop.timeout, Some(500));
        let auction: ProviderAuctionRequest = serde_json::from_str(
            r#"{"constraints":{"zone":"a"},"link_name":"default","provider_ref":"x"}"#,
        )
        .unwrap();
        assert!(satisfies(
            &BTreeMap::from([("zone".into(), "a".into()), ("os".into(), "linux".into())]),
            &auction.constraints
        ));
        assert!(!satisfies(&BTreeMap::new(), &auction.constraints));
        let creds: RegistryCredentialMap =
            serde_json::from_str(r#"{"ghcr.io":{"username":"u","password":"p"}}"#).unwrap();
        assert_eq!(creds["ghcr.io"].registry_type, "oci");
    }

    #[test]
    fn answers_are_shaped_as_0_82_sends_them() {
        let host = Host {
            id: "NH".into(),
            friendly_name: "quiet-sun-1".into(),
            uptime_seconds: 5,
            cluster_issuers: Some("CA,CB".into()),
            labels: Some(BTreeMap::from([("hostcore.os".into(), "linux".into())])),
            lattice: Some("default".into()),
            lattice_prefix: Some("default".into()),
            uptime_human: Some("5s".into()),
            version: Some("0.1.0".into()),
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::to_value(&host).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"NH","friendly_name":"quiet-sun-1","uptime_seconds":5,
                "cluster_issuers":"CA,CB","labels":{"hostcore.os":"linux"},"lattice":"default",
                "lattice_prefix":"default","uptime_human":"5s","version":"0.1.0"})
        );
        let inv: HostInventory = serde_json::from_str(
            r#"{"actors":[{"id":"MA","image_ref":"r","name":"echo","instances":[{"instance_id":"i","revision":2,"max_instances":3,"annotations":{}}]}],
                "providers":[{"public_key":"VP","contract_id":"wasmcloud:keyvalue","link_name":"default","revision":0}],
                "host_id":"NH","issuer":"CC","friendly_name":"f","labels":{},"version":"0.82.0","uptime_human":"1m","uptime_seconds":60}"#,
        )
        .unwrap();
        assert_eq!(inv.actors[0].instances[0].max_instances, 3);
        assert_eq!(inv.providers[0].id, "VP");
        let ack = serde_json::to_string(&CtlOperationAck::refused("no \"such\" actor")).unwrap();
        assert_eq!(ack, r#"{"accepted":false,"error":"no \"such\" actor"}"#);
        let config = serde_json::to_string(&GetConfigKeyResponse {
            found: false,
            data: vec![],
        })
        .unwrap();
        assert_eq!(config, r#"{"found":false,"data":[]}"#);
    }
}
