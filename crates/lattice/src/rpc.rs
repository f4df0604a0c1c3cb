//! Invocations between hosts, as wasmcloud-core 0.82 encodes them
//! (MessagePack with named fields), and their anti-forgery claims: a JWT
//! signed by the sending host's cluster key that binds the invocation id
//! to its origin, target and a hash of its payload.

use std::collections::HashMap;
use std::time::Duration;

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wascap::jwt::{validate_token, Claims};

use crate::ProtocolError;

/// Payloads larger than this travel through the object store.
pub const CHUNK_THRESHOLD: usize = 1024 * 900;
/// Extra time 0.82 gives a call whose payload is chunked.
pub const CHUNK_EXTRA_TIME: Duration = Duration::from_secs(13);

pub fn needs_chunking(len: usize) -> bool {
    len > CHUNK_THRESHOLD
}

/// The object store of chunked payloads: named after the lattice.
pub fn chunk_bucket(lattice: &str) -> String {
    lattice.to_owned()
}

/// The object holding an invocation's payload.
pub fn chunk_object_name(invocation_id: &str) -> String {
    invocation_id.to_owned()
}

/// The object holding an invocation's reply.
pub fn reply_chunk_object_name(invocation_id: &str) -> String {
    format!("{invocation_id}-r")
}

/// An actor (its `M` key, no contract or link) or a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmCloudEntity {
    #[serde(default)]
    pub public_key: String,
    #[serde(default)]
    pub link_name: String,
    #[serde(default)]
    pub contract_id: String,
}

impl WasmCloudEntity {
    pub fn actor(key: &str) -> Self {
        Self {
            public_key: key.to_owned(),
            ..Default::default()
        }
    }

    pub fn provider(key: &str, contract_id: &str, link_name: &str) -> Self {
        Self {
            public_key: key.to_owned(),
            link_name: link_name.to_owned(),
            contract_id: contract_id.to_owned(),
        }
    }

    pub fn is_actor(&self) -> bool {
        self.public_key.starts_with('M')
    }

    pub fn is_provider(&self) -> bool {
        self.public_key.starts_with('V')
    }

    /// `wasmbus://M...`, or `wasmbus://wasmcloud/keyvalue/default/V...`.
    pub fn url(&self) -> String {
        if self.is_actor() {
            format!("wasmbus://{}", self.public_key)
        } else {
            format!(
                "wasmbus://{}/{}/{}",
                self.contract_id
                    .replace(':', "/")
                    .replace(' ', "_")
                    .to_lowercase(),
                self.link_name.replace(' ', "_").to_lowercase(),
                self.public_key
            )
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub origin: WasmCloudEntity,
    pub target: WasmCloudEntity,
    #[serde(default)]
    pub operation: String,
    #[serde(default, with = "serde_bytes")]
    pub msg: Vec<u8>,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub encoded_claims: String,
    #[serde(default)]
    pub host_id: String,
    #[serde(default)]
    pub content_length: u64,
    #[serde(rename = "traceContext", default)]
    pub trace_context: HashMap<String, String>,
}

/// Upper-case hex SHA-256 of the origin URL, the target URL (with its
/// operation), the operation and the payload.
pub fn invocation_hash(origin_url: &str, target_url: &str, operation: &str, msg: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(origin_url.as_bytes());
    hash.update(target_url.as_bytes());
    hash.update(operation.as_bytes());
    hash.update(msg);
    hex::encode_upper(hash.finalize())
}

impl Invocation {
    /// A new invocation from `host_id`, its claims signed by `cluster_key`
    /// over the whole of `msg` (signed once, whether it is chunked or not).
    pub fn new(
        cluster_key: &KeyPair,
        host_id: &str,
        origin: WasmCloudEntity,
        target: WasmCloudEntity,
        operation: &str,
        msg: Vec<u8>,
    ) -> Result<Self, ProtocolError> {
        let id = crate::uuid_v4();
        let target_url = format!("{}/{operation}", target.url());
        let origin_url = origin.url();
        let hash = invocation_hash(&origin_url, &target_url, operation, &msg);
        let claims = Claims::<wascap::jwt::Invocation>::new(
            cluster_key.public_key(),
            id.clone(),
            &target_url,
            &origin_url,
            &hash,
        );
        let encoded_claims = claims
            .encode(cluster_key)
            .map_err(|e| ProtocolError::Claims(e.to_string()))?;
        Ok(Self {
            content_length: msg.len() as u64,
            origin,
            target,
            operation: operation.to_owned(),
            msg,
            id,
            encoded_claims,
            host_id: host_id.to_owned(),
            trace_context: HashMap::new(),
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode(bytes)
    }

    /// Checks the invocation (its whole payload in `msg`) is what a host of
    /// the cluster sent: the sender is a host, the claims' signature and
    /// times are good, their issuer is one of `cluster_issuers`, and they
    /// name this origin, target and payload.
    pub fn validate(&self, cluster_issuers: &[String]) -> Result<(), ProtocolError> {
        let forged = |why: String| Err(ProtocolError::Forged(why));
        if !self.host_id.starts_with('N') || KeyPair::from_public_key(&self.host_id).is_err() {
            return forged(format!("host id `{}` is not a server key", self.host_id));
        }
        let validation = validate_token::<wascap::jwt::Invocation>(&self.encoded_claims)
            .map_err(|e| ProtocolError::Forged(format!("bad claims: {e}")))?;
        if !validation.signature_valid {
            return forged("the claims' signature is not valid".into());
        }
        if validation.expired {
            return forged("the claims have expired".into());
        }
        if validation.cannot_use_yet {
            return forged("the claims are not valid yet".into());
        }
        let claims = Claims::<wascap::jwt::Invocation>::decode(&self.encoded_claims)
            .map_err(|e| ProtocolError::Forged(format!("bad claims: {e}")))?;
        if !cluster_issuers.contains(&claims.issuer) {
            return forged(format!(
                "issuer {} is not one of this host's cluster issuers",
                claims.issuer
            ));
        }
        let Some(meta) = claims.metadata else {
            return forged("the claims describe no invocation".into());
        };
        if claims.subject != self.id {
            return forged("the claims are for another invocation".into());
        }
        let target_url = format!("{}/{}", self.target.url(), self.operation);
        let origin_url = self.origin.url();
        if meta.target_url != target_url {
            return forged(format!(
                "the claims name target {}, not {target_url}",
                meta.target_url
            ));
        }
        if meta.origin_url != origin_url {
            return forged(format!(
                "the claims name origin {}, not {origin_url}",
                meta.origin_url
            ));
        }
        if meta.invocation_hash
            != invocation_hash(&origin_url, &target_url, &self.operation, &self.msg)
        {
            return forged("the payload does not match the claims' hash".into());
        }
        Ok(())
    }
}

/// How deep a peer's MessagePack may nest: far more than an invocation
/// needs, far less than would exhaust the stack.
pub const MAX_DEPTH: usize = 32;

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let mut deserializer = rmp_serde::Deserializer::new(bytes);
    deserializer.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut deserializer)?)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationResponse {
    #[serde(default, with = "serde_bytes")]
    pub msg: Vec<u8>,
    #[serde(default)]
    pub invocation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub content_length: u64,
    #[serde(rename = "traceContext", default)]
    pub trace_context: HashMap<String, String>,
}

impl InvocationResponse {
    pub fn success(invocation_id: &str, msg: Vec<u8>) -> Self {
        Self {
            content_length: msg.len() as u64,
            msg,
            invocation_id: invocation_id.to_owned(),
            ..Default::default()
        }
    }

    pub fn failure(invocation_id: &str, error: &str) -> Self {
        Self {
            invocation_id: invocation_id.to_owned(),
            error: Some(error.to_owned()),
            ..Default::default()
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (KeyPair, Invocation) {
        let cluster = KeyPair::new_cluster();
        let host = KeyPair::new_server();
        let actor = KeyPair::new_module().public_key();
        let provider = KeyPair::new_service().public_key();
        let invocation = Invocation::new(
            &cluster,
            &host.public_key(),
            WasmCloudEntity::actor(&actor),
            WasmCloudEntity::provider(&provider, "wasmcloud:keyvalue", "default"),
            "KeyValue.Increment",
            b"payload".to_vec(),
        )
        .unwrap();
        (cluster, invocation)
    }

    #[test]
    fn urls_are_wasmbus_urls() {
        let p = WasmCloudEntity::provider("VABC", "wasmcloud:Key Value", "My Link");
        assert_eq!(p.url(), "wasmbus://wasmcloud/key_value/my_link/VABC");
        assert_eq!(WasmCloudEntity::actor("MABC").url(), "wasmbus://MABC");
    }

    #[test]
    fn invocations_round_trip_and_validate() {
        let (cluster, invocation) = sample();
        let bytes = invocation.encode().unwrap();
        // Named fields, as wasmbus-rpc reads them.
        let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let keys: Vec<String> = value
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "origin",
                "target",
                "operation",
                "msg",
                "id",
                "encoded_claims",
                "host_id",
                "content_length",
                "traceContext"
            ]
        );
        let back = Invocation::decode(&bytes).unwrap();
        assert_eq!(back, invocation);
        back.validate(&[cluster.public_key()]).unwrap();
        assert!(back
            .validate(&[KeyPair::new_cluster().public_key()])
            .is_err());
    }

    #[test]
    fn tampering_is_refused() {
        let (cluster, invocation) = sample();
        let issuers = [cluster.public_key()];
        let mut other = invocation.clone();
        other.msg = b"other".to_vec();
        assert!(matches!(
            other.validate(&issuers),
            Err(ProtocolError::Forged(_))
        ));
        let mut other = invocation.clone();
        other.target.link_name = "other".into();
        assert!(other.validate(&issuers).is_err());
        let mut other = invocation;
        other.host_id = "not a host".into();
        assert!(other.validate(&issuers).is_err());
    }

    #[test]
    fn responses_default_what_older_peers_leave_out() {
        #[derive(Serialize)]
        struct Old {
            #[serde(with = "serde_bytes")]
            msg: Vec<u8>,
            invocation_id: String,
        }
        let old = rmp_serde::to_vec_named(&Old {
            msg: b"hi".to_vec(),
            invocation_id: "i".into(),
        })
        .unwrap();
        let response = InvocationResponse::decode(&old).unwrap();
        assert_eq!(response.msg, b"hi");
        assert_eq!(response.error, None);
        assert!(InvocationResponse::decode(b"\xc1").is_err());
        // An unknown field nested past the cap is refused, not followed.
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        deep.push(0xc0);
        assert!(InvocationResponse::decode(&deep).is_err());
        assert!(needs_chunking(CHUNK_THRESHOLD + 1) && !needs_chunking(CHUNK_THRESHOLD));
    }
}
