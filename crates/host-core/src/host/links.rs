//! The link table: (actor, contract, link name) → provider and values,
//! behind a small trait a lattice can implement with a NATS key-value
//! bucket.
//!
//! The host owns one [`LinkStore`]. Providers learn their links from it
//! (every link at start, then each change), and the worker's routes for
//! actors' direct calls are derived from it; nothing else keeps links.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use wire::provider::Link;

/// What a link is known by: one per (actor, contract, link name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkKey {
    pub actor_id: String,
    pub contract_id: String,
    pub link_name: String,
}

impl LinkKey {
    pub fn new(actor_id: &str, contract_id: &str, link_name: &str) -> Self {
        Self {
            actor_id: actor_id.to_owned(),
            contract_id: contract_id.to_owned(),
            link_name: link_name.to_owned(),
        }
    }

    pub fn of(link: &Link) -> Self {
        Self::new(&link.actor_id, &link.contract_id, &link.link_name)
    }

    /// wasmCloud's link id: upper-case hex SHA-256 of the actor key, the
    /// contract id and the link name, concatenated.
    pub fn id(&self) -> String {
        lattice::kv::link_id(&self.actor_id, &self.contract_id, &self.link_name)
    }
}

impl std::fmt::Display for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "actor {} to {} (link name {})",
            self.actor_id, self.contract_id, self.link_name
        )
    }
}

/// One change to the table, as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    /// A link was set; `previous` is what it replaced.
    Put {
        link: Link,
        previous: Option<Link>,
    },
    Deleted(Link),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the link store cannot be written: {0}")]
    Unavailable(String),
}

/// What became of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per link change, returned and consumed at once"
)]
pub enum Stored {
    /// Stored and in the local copy: the caller delivers the change.
    Applied(LinkChange),
    /// Stored; the change came back through [`LinkStore::take_changes`]
    /// like any other, and the host had applied it when the write resolved.
    Delivered,
    /// A delete of a link there was not.
    Missing,
}

/// One change of a store shared with other hosts, in the store's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revisioned {
    pub revision: u64,
    pub change: LinkChange,
}

/// Where links live. Reads come from a local copy and never wait. A store
/// only this host writes applies a write at once and returns the change
/// for the host to deliver; a store shared with other hosts hands every
/// change (its own writes included, so all arrive in one order) over
/// through [`take_changes`], and a write resolves once the host reported
/// it [`applied`].
///
/// [`take_changes`]: LinkStore::take_changes
/// [`applied`]: LinkStore::applied
pub trait LinkStore: Send + Sync + 'static {
    fn put(&self, link: Link) -> BoxFuture<'_, Result<Stored, StoreError>>;
    fn delete(&self, key: LinkKey) -> BoxFuture<'_, Result<Stored, StoreError>>;
    fn get(&self, key: &LinkKey) -> Option<Link>;
    fn list(&self) -> Vec<Link>;
    /// The links that name this provider instance.
    fn for_provider(&self, provider_id: &str, link_name: &str) -> Vec<Link> {
        self.list()
            .into_iter()
            .filter(|l| l.provider_id == provider_id && l.link_name == link_name)
            .collect()
    }
    /// Every change, in order, for a store shared with other hosts. `None`
    /// for a store only this host writes, or once taken.
    fn take_changes(&self) -> Option<mpsc::UnboundedReceiver<Revisioned>> {
        None
    }

    /// The host applied the change of `revision` (delivered to providers
    /// and the worker): writes waiting for it may resolve.
    fn applied(&self, revision: u64) {
        let _ = revision;
    }
}

/// The links of a host that runs alone: in memory, gone with the host
/// (a manifest puts them back).
#[derive(Debug, Default)]
pub struct MemoryLinks {
    links: RwLock<BTreeMap<LinkKey, Link>>,
}

impl MemoryLinks {
    /// Applies `change` to the copy (for stores that keep one of these as
    /// their local copy).
    pub fn apply(&self, change: &LinkChange) {
        let mut links = self.links.write();
        match change {
            LinkChange::Put { link, .. } => {
                links.insert(LinkKey::of(link), link.clone());
            }
            LinkChange::Deleted(link) => {
                links.remove(&LinkKey::of(link));
            }
        }
    }

    pub fn insert(&self, link: Link) -> LinkChange {
        let previous = self.links.write().insert(LinkKey::of(&link), link.clone());
        LinkChange::Put { link, previous }
    }

    pub fn remove(&self, key: &LinkKey) -> Option<LinkChange> {
        self.links.write().remove(key).map(LinkChange::Deleted)
    }
}

impl LinkStore for MemoryLinks {
    fn put(&self, link: Link) -> BoxFuture<'_, Result<Stored, StoreError>> {
        let change = self.insert(link);
        Box::pin(async move { Ok(Stored::Applied(change)) })
    }

    fn delete(&self, key: LinkKey) -> BoxFuture<'_, Result<Stored, StoreError>> {
        let stored = self.remove(&key).map_or(Stored::Missing, Stored::Applied);
        Box::pin(async move { Ok(stored) })
    }

    fn get(&self, key: &LinkKey) -> Option<Link> {
        self.links.read().get(key).cloned()
    }

    fn list(&self) -> Vec<Link> {
        self.links.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn link(actor: &str, provider: &str) -> Link {
        Link {
            actor_id: actor.into(),
            provider_id: provider.into(),
            contract_id: "wasmcloud:keyvalue".into(),
            link_name: "default".into(),
            values: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn puts_replace_and_deletes_report_what_they_removed() {
        let store = MemoryLinks::default();
        let first = store.put(link("MA", "VP")).await.unwrap();
        assert_eq!(
            first,
            Stored::Applied(LinkChange::Put {
                link: link("MA", "VP"),
                previous: None
            })
        );
        let moved = store.put(link("MA", "VQ")).await.unwrap();
        assert_eq!(
            moved,
            Stored::Applied(LinkChange::Put {
                link: link("MA", "VQ"),
                previous: Some(link("MA", "VP"))
            })
        );
        assert_eq!(store.for_provider("VQ", "default").len(), 1);
        assert!(store.for_provider("VP", "default").is_empty());
        let key = LinkKey::of(&link("MA", "VQ"));
        assert_eq!(
            store.delete(key.clone()).await.unwrap(),
            Stored::Applied(LinkChange::Deleted(link("MA", "VQ")))
        );
        assert_eq!(store.delete(key).await.unwrap(), Stored::Missing);
        assert!(store.list().is_empty());
    }

    #[test]
    fn link_ids_are_wasmclouds() {
        // sha256("MA" "wasmcloud:keyvalue" "default"), upper-case hex.
        let key = LinkKey::new("MA", "wasmcloud:keyvalue", "default");
        let expected = hex::encode_upper(Sha256::digest(b"MAwasmcloud:keyvaluedefault"));
        assert_eq!(key.id(), expected);
        assert_eq!(key.id().len(), 64);
    }
}
