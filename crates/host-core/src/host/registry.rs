//! The actors this host runs: what the worker needs to restore them, what
//! inventory shows, and lookups by key or call alias.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use wire::control::{ActorKind, ActorSummary};
use wire::worker::ActorSpec;
use wire::Bytes;

use crate::claims::{self, VerifiedActor};

/// One actor of this host.
#[derive(Debug, Clone)]
pub struct ActorRecord {
    /// The key, shared with the calls in flight to it (they are tagged
    /// with it, so a worker crash can be put down to them).
    pub key: Arc<str>,
    pub spec: ActorSpec,
    pub summary: ActorSummary,
    /// The claims' `exp`, seconds since the epoch.
    pub expires: Option<u64>,
}

impl ActorRecord {
    pub fn new(
        verified: &VerifiedActor,
        wasm: Vec<u8>,
        count: u32,
        image_ref: Option<String>,
    ) -> Self {
        let meta = &verified.metadata;
        Self {
            key: Arc::from(verified.key()),
            expires: verified.claims.expires,
            summary: ActorSummary {
                key: verified.key().to_owned(),
                name: meta.name.clone().unwrap_or_else(|| "Anonymous".into()),
                kind: if verified.is_component {
                    ActorKind::Component
                } else {
                    ActorKind::Module
                },
                issuer: verified.claims.issuer.clone(),
                rev: meta.rev,
                ver: meta.ver.clone(),
                call_alias: meta.call_alias.clone(),
                caps: verified.caps(),
                count,
                image_ref,
            },
            spec: ActorSpec {
                key: verified.key().to_owned(),
                hash: claims::content_hash(&wasm),
                wasm: Bytes::from(wasm),
                caps: verified.caps(),
                instances: count,
            },
        }
    }

    pub fn has_cap(&self, contract: &str) -> bool {
        self.summary.caps.iter().any(|c| c == contract)
    }

    /// Whether the claims have expired by now.
    pub fn expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.expires.is_some_and(|exp| exp < now)
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    actors: RwLock<BTreeMap<String, ActorRecord>>,
}

impl Registry {
    pub fn contains(&self, key: &str) -> bool {
        self.actors.read().contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<ActorRecord> {
        self.actors.read().get(key).cloned()
    }

    /// Reads a record in place, without copying its wasm.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&ActorRecord) -> R) -> Option<R> {
        self.actors.read().get(key).map(f)
    }

    pub fn insert(&self, record: ActorRecord) {
        self.actors
            .write()
            .insert(record.summary.key.clone(), record);
    }

    pub fn remove(&self, key: &str) -> Option<ActorRecord> {
        self.actors.write().remove(key)
    }

    pub fn set_count(&self, key: &str, count: u32) {
        if let Some(record) = self.actors.write().get_mut(key) {
            record.summary.count = count;
            record.spec.instances = count;
        }
    }

    /// The key of the actor with this key or call alias.
    pub fn resolve(&self, target: &str) -> Option<Arc<str>> {
        let actors = self.actors.read();
        if let Some(record) = actors.get(target) {
            return Some(record.key.clone());
        }
        actors
            .values()
            .find(|r| r.summary.call_alias.as_deref() == Some(target))
            .map(|r| r.key.clone())
    }

    /// The actor other than `except` whose call alias is `alias`.
    pub fn alias_owner(&self, alias: &str, except: &str) -> Option<String> {
        self.actors
            .read()
            .values()
            .find(|r| r.summary.call_alias.as_deref() == Some(alias) && r.summary.key != except)
            .map(|r| r.summary.key.clone())
    }

    pub fn specs(&self) -> Vec<ActorSpec> {
        self.actors
            .read()
            .values()
            .map(|r| r.spec.clone())
            .collect()
    }

    pub fn summaries(&self) -> Vec<ActorSummary> {
        self.actors
            .read()
            .values()
            .map(|r| r.summary.clone())
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.actors.read().keys().cloned().collect()
    }
}
