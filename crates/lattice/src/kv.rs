//! The lattice's state in JetStream key-value buckets, in wasmCloud 0.82's
//! formats: `LATTICEDATA_{lattice}` holds `LINKDEF_{id}` (the JSON of a
//! link) and `CLAIMS_{key}` (the JSON of an actor's or provider's
//! claims); `CONFIGDATA_{lattice}` holds `{entity}_{key}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::ctl::LinkDefinition;
use crate::ProtocolError;

pub const LINKDEF_PREFIX: &str = "LINKDEF_";
pub const CLAIMS_PREFIX: &str = "CLAIMS_";

pub fn lattice_bucket(lattice: &str) -> String {
    format!("LATTICEDATA_{lattice}")
}

pub fn config_bucket(lattice: &str) -> String {
    format!("CONFIGDATA_{lattice}")
}

pub fn config_key(entity: &str, key: &str) -> String {
    format!("{entity}_{key}")
}

/// wasmCloud's link id: upper-case hex SHA-256 of the actor key, the
/// contract id and the link name, concatenated.
pub fn link_id(actor_id: &str, contract_id: &str, link_name: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(actor_id.as_bytes());
    hash.update(contract_id.as_bytes());
    hash.update(link_name.as_bytes());
    hex::encode_upper(hash.finalize())
}

pub fn linkdef_key(link: &LinkDefinition) -> String {
    format!(
        "{LINKDEF_PREFIX}{}",
        link_id(&link.actor_id, &link.contract_id, &link.link_name)
    )
}

pub fn encode_linkdef(link: &LinkDefinition) -> Vec<u8> {
    serde_json::to_vec(link).unwrap_or_default()
}

/// The link stored under `LINKDEF_{id}`; refused if its id is not its own.
pub fn decode_linkdef(id: &str, bytes: &[u8]) -> Result<LinkDefinition, ProtocolError> {
    let link: LinkDefinition = serde_json::from_slice(bytes)?;
    let own = link_id(&link.actor_id, &link.contract_id, &link.link_name);
    if own != id {
        return Err(ProtocolError::Claims(format!(
            "the link stored under {id} has the id {own}"
        )));
    }
    Ok(link)
}

/// An actor's claims as the lattice keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorClaims {
    #[serde(default)]
    pub call_alias: Option<String>,
    #[serde(default, alias = "caps", deserialize_with = "list_or_commas")]
    pub capabilities: Vec<String>,
    #[serde(default, alias = "iss")]
    pub issuer: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, alias = "rev")]
    pub revision: Option<String>,
    #[serde(default, alias = "sub")]
    pub subject: String,
    #[serde(default, deserialize_with = "list_or_commas")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// A provider's claims as the lattice keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderClaims {
    #[serde(default)]
    pub contract_id: String,
    #[serde(default, alias = "iss")]
    pub issuer: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, alias = "rev")]
    pub revision: Option<String>,
    #[serde(default, alias = "sub")]
    pub subject: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredClaims {
    Actor(ActorClaims),
    Provider(ProviderClaims),
}

impl StoredClaims {
    /// The claims stored under `CLAIMS_{key}`: an actor's for an `M` key,
    /// a provider's for a `V` key; refused if they are another key's.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self, ProtocolError> {
        let claims = if key.starts_with('M') {
            Self::Actor(serde_json::from_slice(bytes)?)
        } else if key.starts_with('V') {
            Self::Provider(serde_json::from_slice(bytes)?)
        } else {
            return Err(ProtocolError::Claims(format!(
                "`{key}` is neither an actor nor a provider key"
            )));
        };
        if claims.subject() != key {
            return Err(ProtocolError::Claims(format!(
                "the claims stored for {key} are {}'s",
                claims.subject()
            )));
        }
        Ok(claims)
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Actor(a) => serde_json::to_vec(a),
            Self::Provider(p) => serde_json::to_vec(p),
        }
        .unwrap_or_default()
    }

    pub fn subject(&self) -> &str {
        match self {
            Self::Actor(a) => &a.subject,
            Self::Provider(p) => &p.subject,
        }
    }

    pub fn key(&self) -> String {
        format!("{CLAIMS_PREFIX}{}", self.subject())
    }

    /// The map `get.claims` answers with, each field under both of the
    /// names 0.82 gives it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let mut both = |a: &str, b: &str, value: String| {
            map.insert(a.to_owned(), value.clone());
            map.insert(b.to_owned(), value);
        };
        match self {
            Self::Actor(a) => {
                both("caps", "capabilities", a.capabilities.join(","));
                both("iss", "issuer", a.issuer.clone());
                both("rev", "revision", a.revision.clone().unwrap_or_default());
                both("sub", "subject", a.subject.clone());
                map.insert(
                    "call_alias".into(),
                    a.call_alias.clone().unwrap_or_default(),
                );
                map.insert("name".into(), a.name.clone().unwrap_or_default());
                map.insert("tags".into(), a.tags.join(","));
                map.insert("version".into(), a.version.clone().unwrap_or_default());
            }
            Self::Provider(p) => {
                both("iss", "issuer", p.issuer.clone());
                both("rev", "revision", p.revision.clone().unwrap_or_default());
                both("sub", "subject", p.subject.clone());
                map.insert("contract_id".into(), p.contract_id.clone());
                map.insert("name".into(), p.name.clone().unwrap_or_default());
                map.insert("version".into(), p.version.clone().unwrap_or_default());
                map.insert(
                    "config_schema".into(),
                    p.config_schema.clone().unwrap_or_default(),
                );
            }
        }
        map
    }
}

fn list_or_commas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
        None(()),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Either::None(()) => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_stored_under_wasmclouds_ids() {
        let link = LinkDefinition {
            actor_id: "MA".into(),
            provider_id: "VP".into(),
            link_name: "default".into(),
            contract_id: "wasmcloud:keyvalue".into(),
            values: BTreeMap::from([("URL".into(), "redis://".into())]),
        };
        let expected = hex::encode_upper(Sha256::digest(b"MAwasmcloud:keyvaluedefault"));
        assert_eq!(linkdef_key(&link), format!("LINKDEF_{expected}"));
        let bytes = encode_linkdef(&link);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"actor_id":"MA","provider_id":"VP","link_name":"default","contract_id":"wasmcloud:keyvalue","values":{"URL":"redis://"}}"#
        );
        assert_eq!(decode_linkdef(&expected, &bytes).unwrap(), link);
        assert!(decode_linkdef("OTHER", &bytes).is_err());
    }

    #[test]
    fn claims_read_either_shape_0_82_wrote() {
        let text = br#"{"call_alias":"echo","caps":"wasmcloud:keyvalue, wasmcloud:httpserver","iss":"AI","name":"echo","rev":"2","sub":"MA","tags":[],"version":"0.1"}"#;
        let StoredClaims::Actor(actor) = StoredClaims::decode("MA", text).unwrap() else {
            panic!("an actor's claims")
        };
        assert_eq!(
            actor.capabilities,
            ["wasmcloud:keyvalue", "wasmcloud:httpserver"]
        );
        assert_eq!(actor.revision.as_deref(), Some("2"));
        let list =
            br#"{"capabilities":["wasmcloud:keyvalue"],"issuer":"AI","subject":"MA","tags":null}"#;
        let claims = StoredClaims::decode("MA", list).unwrap();
        let map = claims.to_map();
        assert_eq!(map["caps"], "wasmcloud:keyvalue");
        assert_eq!(map["capabilities"], "wasmcloud:keyvalue");
        assert_eq!(map["sub"], "MA");
        assert!(StoredClaims::decode("MB", list).is_err());
        let provider = br#"{"contract_id":"wasmcloud:keyvalue","issuer":"AI","name":"kv","revision":"0","subject":"VP","version":"1"}"#;
        let map = StoredClaims::decode("VP", provider).unwrap().to_map();
        assert_eq!(map["config_schema"], "");
        assert_eq!(map["iss"], "AI");
        // What we write reads back the same.
        assert_eq!(
            StoredClaims::decode("MA", &claims.encode()).unwrap(),
            claims
        );
    }
}
